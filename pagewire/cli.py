"""The `pagewire` command: connect pages, read conversations, send test webhooks, run tools."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import grpc

from pagewire import clicomments, clihistory
from pagewire.cliformat import dump_json, iso, table, to_dict
from pagewire.kit.settings import SettingsError, env_secret, grpc_target, var_dir
from pagewire.kit.tls import GrpcSecurity
from pagewire.proto import (
    events_pb2,
    router_pb2,
    router_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)

PLATFORMS = {"facebook": events_pb2.FACEBOOK, "instagram": events_pb2.INSTAGRAM}
PORTS = {"router": 50051, "tokens": 50052, "subscriptions": 50053}
RPC_TIMEOUT_S = 30.0
ROTATE_TIMEOUT_S = 3600.0  # a rotation rewraps every stored token before it answers


class CliError(Exception):
    """A problem to print as one line, with the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _platform(name: str) -> int:
    return PLATFORMS[name]


def _security() -> GrpcSecurity:
    """The CLI's own certificate: PAGEWIRE_TLS_*, else var/tls/cli.* (written by `make run`)."""
    try:
        return GrpcSecurity.from_env(os.environ, "cli", default_dir=var_dir(os.environ) / "tls")
    except SettingsError as exc:
        raise CliError(f"{exc}; `make run` writes var/tls/cli.pem for this", code=2) from None


async def _call(
    service: str, stub_type: type, method: str, request: object, timeout: float = RPC_TIMEOUT_S
) -> object:
    """One RPC to `service` over mutual TLS, with a deadline and an error a person can act on."""
    target = grpc_target(os.environ, service, PORTS[service])
    async with _security().channel(target, service) as channel:
        try:
            return await getattr(stub_type(channel), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or ""):
                raise CliError(
                    f"cannot reach the {service} service at {target} (is `make run` running?"
                    f" set PAGEWIRE_{service.upper()}_ADDR to point elsewhere)",
                    code=3,
                ) from None
            raise CliError(f"{service}: {exc.code().name}: {exc.details()}") from None


def _read_token(path: str, option: str = "--token-file") -> str:
    """Tokens come from a file or stdin ('-'), never argv, which shows in `ps`."""
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{option}: cannot read {path}: {exc.strerror}", code=2) from None
    token = raw.strip()
    if not token:
        raise CliError(f"{option}: {path} is empty", code=2)
    return token


_TOKEN_STATES = {
    subscriptions_pb2.TOKEN_ACTIVE: "active",
    subscriptions_pb2.TOKEN_REAUTH_REQUIRED: "REAUTH",
    subscriptions_pb2.TOKEN_MISSING: "missing",
    subscriptions_pb2.TOKEN_UNKNOWN: "unknown",
}


def _token_cell(p: subscriptions_pb2.Page) -> str:
    if not p.HasField("token"):
        return ""
    cell = _TOKEN_STATES.get(p.token.state, "unknown")
    if p.token.expires_at_ms:
        cell += f" until {iso(p.token.expires_at_ms)[:10]}"
    return cell


def _page_rows(pages: list[subscriptions_pb2.Page]) -> str:
    rows = [
        (
            events_pb2.Platform.Name(p.platform).lower(),
            p.page_id,
            p.account_id,
            subscriptions_pb2.SubscriptionStatus.Name(p.status),
            ",".join(p.subscribed_fields),
            _token_cell(p),
            iso(p.last_checked_at_ms)[:19],
            str(p.repairs),
            iso(p.activity.last_event_ms)[:19] if p.activity.known else "unknown",
            clihistory.history_cell(p),
            p.last_error or (p.token.reason if p.HasField("token") else ""),
        )
        for p in pages
    ]
    headers = ("PLATFORM", "PAGE", "ACCOUNT", "STATUS", "FIELDS", "TOKEN", "LAST CHECK")
    return table(rows, (*headers, "REPAIRS", "LAST EVENT", "HISTORY", "LAST ERROR"))


def _expires_at_ms(expires_in_s: int | None) -> int:
    if expires_in_s is None:
        return 0
    if expires_in_s <= 0:
        raise CliError("--token-expires-in: must be a positive number of seconds", code=2)
    return int(time.time() * 1000) + expires_in_s * 1000


async def pages_connect(args: argparse.Namespace) -> str:
    token = _read_token(args.token_file)
    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else []
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "ConnectPage",
        subscriptions_pb2.ConnectPageRequest(
            platform=_platform(args.platform),
            page_id=args.page_id,
            account_id=args.account,
            page_token=token,
            subscribed_fields=fields,
            move=args.move,
            human_agent=args.human_agent,
            token_expires_at_ms=_expires_at_ms(args.token_expires_in),
            no_history=args.no_history,
            history_days=args.history_days or 0,
        ),
    )
    if args.json:
        return dump_json(reply)
    page = reply.page
    status = subscriptions_pb2.SubscriptionStatus.Name(page.status)
    line = f"page {page.page_id} ({args.platform}) connected to account {page.account_id}: {status}"
    if page.last_error:
        line += (
            f" — Graph error {page.last_error_code}/{page.last_error_subcode}: {page.last_error}"
        )
    if reply.parked_routed:
        line += f"; {reply.parked_routed} parked event(s) routed"
    if page.history.state in (subscriptions_pb2.HISTORY_PENDING, subscriptions_pb2.HISTORY_RUNNING):
        line += (
            f"; importing {page.history.days} days of history"
            f" (follow it: pagewire pages history --platform {args.platform}"
            f" --page-id {page.page_id})"
        )
    return line


async def pages_list(args: argparse.Namespace) -> str:
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "ListPages",
        subscriptions_pb2.ListPagesRequest(account_id=args.account or "", with_details=True),
    )
    return dump_json(list(reply.pages)) if args.json else _page_rows(list(reply.pages))


async def pages_get(args: argparse.Namespace) -> str:
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "GetPage",
        subscriptions_pb2.GetPageRequest(
            platform=_platform(args.platform), page_id=args.page_id, with_details=True
        ),
    )
    return dump_json(reply.page) if args.json else _page_rows([reply.page])


async def pages_disconnect(args: argparse.Namespace) -> str:
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "DisconnectPage",
        subscriptions_pb2.DisconnectPageRequest(
            platform=_platform(args.platform), page_id=args.page_id, purge=args.purge
        ),
    )
    if args.json:
        return dump_json(reply)
    if reply.unsubscribed:
        line = f"page {args.page_id} disconnected and unsubscribed"
    else:
        line = f"page {args.page_id} disconnected; Graph unsubscribe failed: {reply.graph_error}"
    if reply.purged:
        line += (
            f"; purged {reply.purged_conversations} conversation(s),"
            f" {reply.purged_messages} message(s), {reply.purged_parked} parked event(s)"
        )
    elif args.purge:
        raise CliError(f"{line}; stored data NOT purged: {reply.purge_error}")
    return line


async def pages_import(args: argparse.Namespace) -> str:
    """Lists the Pages a user token manages and connects the chosen ones; the token is not kept."""
    if args.all and args.page_id:
        raise CliError("give --page-id or --all, not both", code=2)
    for page_id in args.page_id or []:
        if not page_id.isdigit():
            raise CliError(f"--page-id: {page_id!r} is not a page id (digits)", code=2)
    token = _read_token(args.user_token_file, "--user-token-file")
    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else []
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "ImportPages",
        subscriptions_pb2.ImportPagesRequest(
            user_token=token,
            account_id=args.account,
            page_ids=args.page_id or [],
            all=args.all,
            move=args.move,
            subscribed_fields=fields,
        ),
    )
    if args.json:
        return dump_json(reply)
    connected = {p.page_id: p for p in reply.connected}
    rows = []
    for page in reply.available:
        done = connected.get(page.page_id)
        state = subscriptions_pb2.SubscriptionStatus.Name(done.status) if done else ""
        owner = page.connected_account_id
        rows.append((page.page_id, page.name, ",".join(page.tasks), owner, state))
    lines = [table(rows, ("PAGE", "NAME", "TASKS", "ACCOUNT", "CONNECTED NOW"))]
    if not connected:
        lines.append("nothing connected: choose pages with --page-id ID (repeatable) or --all")
    return "\n".join(lines)


async def pages_reconcile(args: argparse.Namespace) -> str:
    if args.page_id and not args.platform:
        raise CliError("--page-id needs --platform", code=2)
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "Reconcile",
        subscriptions_pb2.ReconcileRequest(
            platform=_platform(args.platform) if args.platform else 0,
            page_id=args.page_id or "",
            account_id=args.account or "",
        ),
    )
    if args.json:
        return dump_json(reply)
    rows = [
        (
            events_pb2.Platform.Name(c.platform).lower(),
            c.page_id,
            subscriptions_pb2.CheckOutcome.Name(c.outcome).removeprefix("CHECK_"),
            ("token refreshed; " if c.token_refreshed else "") + c.detail,
        )
        for c in reply.pages
    ]
    summary = (
        f"checked {reply.checked}: {reply.ok} ok, {reply.repaired} repaired,"
        f" {reply.reauth_required} need re-authorization, {reply.failed} failed,"
        f" {reply.skipped} skipped"
    )
    return table(rows, ("PLATFORM", "PAGE", "RESULT", "DETAIL")) + "\n" + summary


async def conversations_list(args: argparse.Namespace) -> str:
    if not args.account and not args.page_id:
        raise CliError("give --account or --page-id", code=2)
    reply = await _call(
        "router",
        router_pb2_grpc.RouterServiceStub,
        "ListConversations",
        router_pb2.ListConversationsRequest(
            account_id=args.account or "",
            page_id=args.page_id or "",
            platform=_platform(args.platform) if args.platform else 0,
            page_size=args.limit,
        ),
    )
    items = list(reply.conversations)
    if args.json:
        return dump_json(items)
    rows = [
        (
            c.id,
            c.account_id,
            events_pb2.Platform.Name(c.platform).lower(),
            c.page_id,
            c.user_id,
            str(c.message_count),
            iso(c.last_event_ms),
        )
        for c in items
    ]
    return table(rows, ("ID", "ACCOUNT", "PLATFORM", "PAGE", "USER", "MESSAGES", "LAST EVENT"))


async def messages_list(args: argparse.Namespace) -> str:
    if not args.conversation and not args.page_id:
        raise CliError("give --conversation or --page-id", code=2)
    reply = await _call(
        "router",
        router_pb2_grpc.RouterServiceStub,
        "ListMessages",
        router_pb2.ListMessagesRequest(
            conversation_id=args.conversation or "",
            page_id=args.page_id or "",
            user_id=args.user or "",
            platform=_platform(args.platform) if args.platform else 0,
            page_size=args.limit,
        ),
    )
    items = list(reply.messages)
    if args.json:
        return dump_json(items)
    rows = [
        (
            iso(m.timestamp_ms),
            events_pb2.Direction.Name(m.direction),
            router_pb2.MessageStatus.Name(m.status),
            m.mid,
            m.text or ", ".join(a.type for a in m.attachments),
        )
        for m in items
    ]
    return table(rows, ("META TIME", "DIRECTION", "STATUS", "MID", "TEXT"))


def _target(args: argparse.Namespace) -> dict[str, object]:
    if not args.conversation and not (args.page_id and args.user):
        raise CliError("give --conversation, or --page-id and --user", code=2)
    return {
        "conversation_id": args.conversation or "",
        "platform": _platform(args.platform),
        "page_id": args.page_id or "",
        "user_id": args.user or "",
    }


async def messages_send(args: argparse.Namespace) -> str:
    attachments = []
    for spec in args.attachment:
        kind, _, url = spec.partition("=")
        if not url:
            raise CliError(f"--attachment {spec!r}: use TYPE=URL", code=2)
        attachments.append(router_pb2.OutgoingAttachment(type=kind, url=url))
    replies = []
    for spec in args.quick_reply:
        title, _, payload = spec.partition("=")
        replies.append(router_pb2.QuickReply(title=title, payload=payload or title))
    reply = await _call(
        "router",
        router_pb2_grpc.RouterServiceStub,
        "SendMessage",
        router_pb2.SendMessageRequest(
            text=args.text,
            attachments=attachments,
            quick_replies=replies,
            metadata=args.metadata,
            idempotency_key=args.idempotency_key or secrets.token_urlsafe(16),
            human_agent=args.human_agent,
            **_target(args),  # type: ignore[arg-type]
        ),
    )
    if args.json:
        return dump_json(reply)
    state = router_pb2.SendState.Name(reply.state)
    line = f"{state} ({reply.messaging_type}{' ' + reply.tag if reply.tag else ''})"
    if reply.mids:
        line += ": " + ", ".join(reply.mids)
    if reply.error_message:
        line += f" — {reply.error_code}/{reply.error_subcode}: {reply.error_message}"
    return line + (" [replayed]" if reply.replayed else "")


async def messages_action(args: argparse.Namespace) -> str:
    await _call(
        "router",
        router_pb2_grpc.RouterServiceStub,
        "SendAction",
        router_pb2.SendActionRequest(action=args.action_name, **_target(args)),  # type: ignore[arg-type]
    )
    return "" if args.json else f"{args.action_name} sent"


async def router_status(args: argparse.Namespace) -> str:
    """The apply stage's backlog: how much is acknowledged but not visible yet."""
    reply = await _call(
        "router",
        router_pb2_grpc.RouterServiceStub,
        "GetLogStatus",
        router_pb2.GetLogStatusRequest(),
    )
    if args.json:
        return dump_json(reply)  # type: ignore[arg-type]
    age = reply.oldest_pending_age_ms / 1000  # type: ignore[attr-defined]
    rows = [
        (
            str(reply.pending),  # type: ignore[attr-defined]
            str(reply.leased),  # type: ignore[attr-defined]
            f"{age:.1f}s" if reply.pending else "-",  # type: ignore[attr-defined]
            str(reply.parked),  # type: ignore[attr-defined]
            str(reply.failed),  # type: ignore[attr-defined]
        )
    ]
    return table(rows, ("PENDING", "BEING APPLIED", "OLDEST PENDING", "PARKED", "FAILED"))


async def events_tail(args: argparse.Namespace) -> str:
    """Prints an account's changes after a cursor, then new ones as they commit (Ctrl-C stops)."""
    target = grpc_target(os.environ, "router", PORTS["router"])
    async with _security().channel(target, "router") as channel:
        call = router_pb2_grpc.RouterServiceStub(channel).StreamEvents(
            router_pb2.StreamEventsRequest(account_id=args.account, after_cursor=args.after)
        )
        try:
            async for change in call:
                if args.json:
                    print(json.dumps(to_dict(change), ensure_ascii=False), flush=True)
                    continue
                if change.HasField("comment") or change.HasField("thread"):
                    # A comment thread's change: the post, the comment, its text.
                    where = f"{change.thread.page_id}:{change.thread.post_id}"
                    what = change.comment.text or change.comment.comment_id
                elif change.kind == router_pb2.HISTORY_IMPORTED:
                    # One line per imported conversation; its messages have no line of their own.
                    where = f"{change.conversation.page_id}:{change.conversation.user_id}"
                    what = f"history imported, {change.conversation.message_count} messages"
                else:
                    where = f"{change.conversation.page_id}:{change.conversation.user_id}"
                    message = change.message
                    what = message.text or message.mid or change.event.kind
                print(
                    f"{change.cursor:>8}  {router_pb2.ChangeKind.Name(change.kind):<22}"
                    f"  {where}  {what}",
                    flush=True,
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise CliError(f"cannot reach the router service at {target}", code=3) from None
            raise CliError(f"router: {exc.code().name}: {exc.details()}") from None
    return ""


def _app_secret(environ: Mapping[str, str], instagram: bool, secret_file: str | None) -> bytes:
    """The secret to sign with, never from argv (which shows in `ps`): `--secret-file`, else
    the environment (the Instagram secret first for an Instagram body), else the dev secret
    `make run` wrote."""
    if secret_file:
        return _read_token(secret_file, "--secret-file").encode()
    try:
        secret = env_secret(environ, "INSTAGRAM_APP_SECRET", required=False) if instagram else None
        secret = secret or env_secret(environ, "APP_SECRET", required=False)
    except SettingsError as exc:
        raise CliError(str(exc), code=2) from None
    if secret:
        return secret.encode()
    dev = var_dir(environ) / "app_secret"
    if dev.exists():
        return dev.read_text(encoding="utf-8").strip().encode()
    variables = "PAGEWIRE_INSTAGRAM_APP_SECRET, " if instagram else ""
    raise CliError(
        f"no app secret: pass --secret-file PATH, set {variables}PAGEWIRE_APP_SECRET"
        f" (or its _FILE variant), or run `make run`, which writes {dev}",
        2,
    )


class _RefuseSecretArgument(argparse.Action):
    """`--secret VALUE` is gone: refused without echoing the value, pointing at the file."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is no longer accepted: a secret on the command line shows in `ps`;"
            " use --secret-file PATH (or - for stdin), or set PAGEWIRE_APP_SECRET"
        )


def webhook_send(args: argparse.Namespace) -> str:
    """POSTs a file's exact bytes, signed like Meta signs them."""
    import httpx

    try:
        body = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}", code=2) from None
    try:
        kind = json.loads(body).get("object")
    except (ValueError, AttributeError):
        kind = None
    instagram = kind == "instagram"
    secret = _app_secret(os.environ, instagram, args.secret_file)
    base = (args.url or os.environ.get("PAGEWIRE_GATEWAY_URL") or "http://127.0.0.1:8080").rstrip(
        "/"
    )
    url = (
        base
        if "/webhooks/" in base
        else f"{base}/webhooks/{'instagram' if instagram else 'facebook'}"
    )
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    try:
        with httpx.Client(timeout=10) as client:
            response = client.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the gateway at {url} ({type(exc).__name__})", 3) from None
    text = response.text.strip()
    if response.status_code != 200:
        raise CliError(f"gateway answered {response.status_code}: {text}")
    return text if args.json else f"{response.status_code} {text}"


def _tokens(method: str, request: object, timeout: float = RPC_TIMEOUT_S) -> Awaitable[object]:
    return _call("tokens", tokens_pb2_grpc.TokensServiceStub, method, request, timeout)


async def tokens_rotate(args: argparse.Namespace) -> str:
    reply = await _tokens(
        "RotateKeys",
        tokens_pb2.RotateKeysRequest(
            new_key_id=args.key_id or "",
            generate_key=not args.key_id,
            batch_size=args.batch_size,
        ),
        ROTATE_TIMEOUT_S,
    )
    if args.json:
        return dump_json(reply)
    lines = [
        f"primary key: {reply.previous_primary_key_id} -> {reply.primary_key_id}"
        + (" (generated into the key ring file)" if reply.key_ring_file_updated else ""),
        f"rewrapped {reply.rewrapped} token(s); {reply.failed} could not be opened",
    ]
    for page in reply.failed_pages:
        platform = events_pb2.Platform.Name(page.platform).lower()
        lines.append(f"  not rewrapped: {platform} page {page.page_id}")
    lines.append("see `pagewire tokens keys` for what each key still seals")
    return "\n".join(lines)


async def tokens_keys(args: argparse.Namespace) -> str:
    reply = await _tokens("ListKeys", tokens_pb2.ListKeysRequest())
    if args.json:
        return dump_json(reply)
    rows = [
        (
            k.key_id,
            "yes" if k.primary else "",
            "yes" if k.in_key_ring else "MISSING",
            str(k.tokens),
            str(k.legacy_format_tokens),
            iso(k.retired_at_ms) if k.retired else "",
        )
        for k in reply.keys
    ]
    out = table(rows, ("KEY ID", "PRIMARY", "IN KEY RING", "TOKENS", "LEGACY FORMAT", "RETIRED"))
    removable = [k.key_id for k in reply.keys if not k.primary and not k.tokens and not k.retired]
    if removable:
        out += "\nunused, can be removed: " + ", ".join(removable)
        out += " (pagewire tokens remove-key --key-id <id>)"
    return out


async def tokens_remove_key(args: argparse.Namespace) -> str:
    reply = await _tokens("RemoveKey", tokens_pb2.RemoveKeyRequest(key_id=args.key_id))
    return dump_json(reply) if args.json else f"key {args.key_id} retired: {reply.note}"


async def tokens_audit(args: argparse.Namespace) -> str:
    reply = await _tokens(
        "ListAudit",
        tokens_pb2.ListAuditRequest(
            platform=_platform(args.platform) if args.platform else 0,
            page_id=args.page_id or "",
            limit=args.limit,
        ),
    )
    entries = list(reply.entries)
    if args.json:
        return dump_json(entries)
    rows = [
        (
            iso(e.at_ms),
            f"{e.caller} (for {e.on_behalf_of})" if e.on_behalf_of else e.caller,
            e.action,
            events_pb2.Platform.Name(e.page.platform).lower() if e.HasField("page") else "",
            e.page.page_id if e.HasField("page") else "",
            e.outcome,
            e.detail,
        )
        for e in entries
    ]
    return table(rows, ("TIME", "CALLER", "ACTION", "PLATFORM", "PAGE", "OUTCOME", "DETAIL"))


async def tokens_status(args: argparse.Namespace) -> str:
    reply = await _tokens(
        "GetTokenStatus",
        tokens_pb2.GetTokenStatusRequest(
            page=tokens_pb2.PageRef(platform=_platform(args.platform), page_id=args.page_id)
        ),
    )
    if args.json:
        return dump_json(reply)
    rows = [
        (
            tokens_pb2.TokenStatus.Name(reply.status),
            reply.key_id,
            str(reply.format_version),
            iso(reply.created_at_ms),
            iso(reply.updated_at_ms),
            reply.reason,
        )
    ]
    return table(rows, ("STATUS", "KEY ID", "FORMAT", "CREATED", "UPDATED", "REASON"))


def fake_graph(args: argparse.Namespace) -> str:
    from pagewire.fakegraph import serve

    serve(args.host, args.port)
    return ""


def db_upgrade(args: argparse.Namespace) -> str:
    from pagewire.kit import migrate
    from pagewire.kit.settings import database_url

    lines = []
    for service in args.service or migrate.SERVICES_WITH_SCHEMA:
        url = database_url(os.environ, service)
        migrate.upgrade(service, url)
        lines.append(f"{service}: at revision {migrate.current(service, url)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagewire", description=__doc__)
    groups = parser.add_subparsers(dest="group", required=True)

    def command(group, name: str, handler: Callable, help_: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def, type-arg]
        sub = group.add_parser(name, help=help_, description=help_)
        sub.set_defaults(handler=handler)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    def page_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--platform", choices=sorted(PLATFORMS), required=True)
        sub.add_argument("--page-id", required=True, help="Page id or Instagram account id")

    def conversation_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--conversation")
        sub.add_argument("--platform", choices=sorted(PLATFORMS), default="facebook")
        sub.add_argument("--page-id")
        sub.add_argument("--user", help="PSID / IGSID (with --page-id)")

    pages = groups.add_parser("pages", help="page connections").add_subparsers(
        dest="action", required=True
    )
    sub = command(pages, "connect", pages_connect, "connect a page to an account")
    page_args(sub)
    sub.add_argument("--account", required=True)
    sub.add_argument("--token-file", required=True, help="file holding the page token ('-': stdin)")
    sub.add_argument("--fields", help="comma-separated webhook fields (default: all we handle)")
    sub.add_argument("--move", action="store_true", help="allow moving from another account")
    sub.add_argument(
        "--human-agent",
        action="store_true",
        help="the app has Meta's Human Agent permission: replies may use the 7-day tag",
    )
    sub.add_argument(
        "--token-expires-in",
        type=int,
        metavar="SECONDS",
        help="the token's lifetime as Meta gave it (expires_in), e.g. for Instagram Login",
    )
    sub.add_argument(
        "--no-history", action="store_true", help="do not import the page's past conversations"
    )
    sub.add_argument(
        "--history-days", type=int, metavar="N", help="import N days of history (default 90)"
    )
    sub = command(
        pages, "list", pages_list, "list pages: status, fields, token, last check and event"
    )
    sub.add_argument("--account")
    page_args(command(pages, "get", pages_get, "show one page connection"))
    sub = command(pages, "disconnect", pages_disconnect, "unsubscribe a page, forget its token")
    page_args(sub)
    sub.add_argument(
        "--purge", action="store_true", help="also delete its stored conversations and messages"
    )
    sub = command(
        pages, "import", pages_import, "connect Pages listed by a user token (/me/accounts)"
    )
    sub.add_argument(
        "--user-token-file",
        required=True,
        help="file holding a Facebook user token ('-': stdin); used once, never stored",
    )
    sub.add_argument("--account", required=True)
    sub.add_argument("--page-id", action="append", help="a Page to connect (repeatable)")
    sub.add_argument("--all", action="store_true", help="connect every Page the user manages")
    sub.add_argument("--fields", help="comma-separated webhook fields (default: all we handle)")
    sub.add_argument("--move", action="store_true", help="allow moving from another account")
    sub = command(
        pages, "reconcile", pages_reconcile, "check pages against Graph now and repair them"
    )
    sub.add_argument("--platform", choices=sorted(PLATFORMS))
    sub.add_argument("--page-id")
    sub.add_argument("--account")
    clihistory.register(pages, command, _call, PLATFORMS)

    conversations = groups.add_parser("conversations", help="stored conversations")
    sub = command(
        conversations.add_subparsers(dest="action", required=True),
        "list",
        conversations_list,
        "list conversations of an account or a page",
    )
    sub.add_argument("--account")
    sub.add_argument("--page-id")
    sub.add_argument("--platform", choices=sorted(PLATFORMS))
    sub.add_argument("--limit", type=int, default=100)

    messages = groups.add_parser("messages", help="stored messages")
    message_actions = messages.add_subparsers(dest="action", required=True)
    sub = command(
        message_actions,
        "list",
        messages_list,
        "list messages of a conversation, in Meta's timestamp order",
    )
    sub.add_argument("--conversation")
    sub.add_argument("--page-id")
    sub.add_argument("--user", help="PSID / IGSID (with --page-id)")
    sub.add_argument("--platform", choices=sorted(PLATFORMS))
    sub.add_argument("--limit", type=int, default=100)
    sub = command(message_actions, "send", messages_send, "reply through the Send API")
    conversation_args(sub)
    sub.add_argument("--text", default="")
    sub.add_argument(
        "--attachment",
        action="append",
        default=[],
        metavar="TYPE=URL",
        help="image, audio, video or file by https URL; repeatable",
    )
    sub.add_argument("--quick-reply", action="append", default=[], metavar="TITLE[=PAYLOAD]")
    sub.add_argument("--metadata", default="")
    sub.add_argument(
        "--idempotency-key",
        help="the same key never sends twice (default: a new random key)",
    )
    sub.add_argument("--human-agent", action="store_true", help="outside 24 h: HUMAN_AGENT tag")
    sub = command(message_actions, "action", messages_action, "typing_on, typing_off, mark_seen")
    conversation_args(sub)
    sub.add_argument("action_name", choices=("typing_on", "typing_off", "mark_seen"))

    router = groups.add_parser("router", help="the router's event log")
    command(
        router.add_subparsers(dest="action", required=True),
        "status",
        router_status,
        "pending (acknowledged, not visible yet), parked and failed log entries",
    )

    events = groups.add_parser("events", help="the change feed, reprocessing kept items")
    event_actions = events.add_subparsers(dest="action", required=True)
    sub = command(
        event_actions,
        "tail",
        events_tail,
        "follow an account's changes (messages, statuses, reactions, edits) from a cursor",
    )
    sub.add_argument("--account", required=True)
    sub.add_argument("--after", type=int, default=0, help="last cursor already processed")
    clicomments.register(groups, command, _call, PLATFORMS, event_actions)

    webhook = groups.add_parser("webhook", help="test webhooks")
    sub = command(
        webhook.add_subparsers(dest="action", required=True),
        "send",
        webhook_send,
        "sign a webhook body with the app secret and POST it to the gateway",
    )
    sub.add_argument("file")
    sub.add_argument(
        "--secret-file",
        help="file holding the app secret, - for stdin (default: PAGEWIRE_APP_SECRET, for an"
        " Instagram body PAGEWIRE_INSTAGRAM_APP_SECRET first, else var/app_secret)",
    )
    # Only to refuse it clearly; no abbreviation may turn `--secret VALUE` into a file name.
    sub.add_argument("--secret", nargs="?", action=_RefuseSecretArgument, help=argparse.SUPPRESS)
    sub.allow_abbrev = False
    sub.add_argument("--url", help="gateway base URL (default http://127.0.0.1:8080)")

    tokens = groups.add_parser("tokens", help="the token vault's keys and audit").add_subparsers(
        dest="action", required=True
    )
    sub = command(
        tokens,
        "rotate",
        tokens_rotate,
        "make a key the primary and rewrap every stored token with it",
    )
    sub.add_argument(
        "--key-id",
        help="a key already in the key ring (Secret); without it the service generates one"
        " into its key ring file (only when that file is writable, as with `make run`)",
    )
    sub.add_argument("--batch-size", type=int, default=0, help="tokens per transaction (200)")
    command(tokens, "keys", tokens_keys, "key ids and how many stored tokens each one seals")
    sub = command(tokens, "remove-key", tokens_remove_key, "retire a key no token uses any more")
    sub.add_argument("--key-id", required=True)
    sub = command(tokens, "audit", tokens_audit, "who did what to page tokens, newest first")
    sub.add_argument("--page-id", help="only this page (default: everything, rotations too)")
    sub.add_argument("--platform", choices=sorted(PLATFORMS))
    sub.add_argument("--limit", type=int, default=50)
    page_args(command(tokens, "status", tokens_status, "a page token's status, never the token"))

    sub = groups.add_parser("fake-graph", help="run the local Graph API stand-in")
    sub.set_defaults(handler=fake_graph, json=False)
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=8090)

    db = groups.add_parser("db", help="database schemas").add_subparsers(
        dest="action", required=True
    )
    sub = command(db, "upgrade", db_upgrade, "apply every service's migrations")
    sub.add_argument("--service", action="append", choices=("router", "tokens", "subscriptions"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], Awaitable[str] | str] = args.handler
    try:
        result = handler(args)
        output = asyncio.run(result) if asyncio.iscoroutine(result) else result
    except CliError as exc:
        print(f"pagewire: {exc}", file=sys.stderr)
        return exc.code
    except SettingsError as exc:
        print(f"pagewire: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if output:
        print(output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
