"""The `pagewire` command: connect pages, read conversations, send test webhooks, run tools."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import grpc

from pagewire.cliformat import dump_json, iso, table
from pagewire.kit.settings import SettingsError, env_secret, grpc_target, var_dir
from pagewire.proto import (
    events_pb2,
    router_pb2,
    router_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
)

PLATFORMS = {"facebook": events_pb2.FACEBOOK, "instagram": events_pb2.INSTAGRAM}
PORTS = {"router": 50051, "tokens": 50052, "subscriptions": 50053}
RPC_TIMEOUT_S = 30.0


class CliError(Exception):
    """A problem to print as one line, with the exit code to use."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _platform(name: str) -> int:
    return PLATFORMS[name]


async def _call(service: str, stub_type: type, method: str, request: object) -> object:
    """One RPC to `service`, with a deadline and an error a person can act on."""
    target = grpc_target(os.environ, service, PORTS[service])
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            return await getattr(stub_type(channel), method)(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or ""):
                raise CliError(
                    f"cannot reach the {service} service at {target} (is `make run` running?"
                    f" set PAGEWIRE_{service.upper()}_ADDR to point elsewhere)",
                    code=3,
                ) from None
            raise CliError(f"{service}: {exc.code().name}: {exc.details()}") from None


def _read_token(path: str) -> str:
    """Tokens come from a file or stdin ('-'), never argv, which shows in `ps`."""
    try:
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--token-file: cannot read {path}: {exc.strerror}", code=2) from None
    token = raw.strip()
    if not token:
        raise CliError(f"--token-file: {path} is empty", code=2)
    return token


def _page_rows(pages: list[subscriptions_pb2.Page]) -> str:
    rows = [
        (
            events_pb2.Platform.Name(p.platform).lower(),
            p.page_id,
            p.account_id,
            subscriptions_pb2.SubscriptionStatus.Name(p.status),
            ",".join(p.subscribed_fields),
            p.last_error,
        )
        for p in pages
    ]
    return table(rows, ("PLATFORM", "PAGE", "ACCOUNT", "STATUS", "FIELDS", "LAST ERROR"))


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
    return line


async def pages_list(args: argparse.Namespace) -> str:
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "ListPages",
        subscriptions_pb2.ListPagesRequest(account_id=args.account or ""),
    )
    return dump_json(list(reply.pages)) if args.json else _page_rows(list(reply.pages))


async def pages_get(args: argparse.Namespace) -> str:
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "GetPage",
        subscriptions_pb2.GetPageRequest(platform=_platform(args.platform), page_id=args.page_id),
    )
    return dump_json(reply.page) if args.json else _page_rows([reply.page])


async def pages_disconnect(args: argparse.Namespace) -> str:
    reply = await _call(
        "subscriptions",
        subscriptions_pb2_grpc.SubscriptionsServiceStub,
        "DisconnectPage",
        subscriptions_pb2.DisconnectPageRequest(
            platform=_platform(args.platform), page_id=args.page_id
        ),
    )
    if args.json:
        return dump_json(reply)
    if reply.unsubscribed:
        return f"page {args.page_id} disconnected and unsubscribed"
    return f"page {args.page_id} disconnected; Graph unsubscribe failed: {reply.graph_error}"


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


def _app_secret(environ: Mapping[str, str], instagram: bool) -> bytes:
    """The secret to sign with: the environment, else the dev secret `make run` wrote."""
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
    raise CliError("no app secret: pass --secret, set PAGEWIRE_APP_SECRET or run `make run`", 2)


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
    secret = args.secret.encode() if args.secret else _app_secret(os.environ, instagram)
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

    pages = groups.add_parser("pages", help="page connections").add_subparsers(
        dest="action", required=True
    )
    sub = command(pages, "connect", pages_connect, "connect a page to an account")
    page_args(sub)
    sub.add_argument("--account", required=True)
    sub.add_argument("--token-file", required=True, help="file holding the page token ('-': stdin)")
    sub.add_argument("--fields", help="comma-separated webhook fields (default: all we handle)")
    sub.add_argument("--move", action="store_true", help="allow moving from another account")
    sub = command(pages, "list", pages_list, "list page connections")
    sub.add_argument("--account")
    page_args(command(pages, "get", pages_get, "show one page connection"))
    page_args(
        command(pages, "disconnect", pages_disconnect, "unsubscribe a page, forget its token")
    )

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
    sub = command(
        messages.add_subparsers(dest="action", required=True),
        "list",
        messages_list,
        "list messages of a conversation, in Meta's timestamp order",
    )
    sub.add_argument("--conversation")
    sub.add_argument("--page-id")
    sub.add_argument("--user", help="PSID / IGSID (with --page-id)")
    sub.add_argument("--platform", choices=sorted(PLATFORMS))
    sub.add_argument("--limit", type=int, default=100)

    webhook = groups.add_parser("webhook", help="test webhooks")
    sub = command(
        webhook.add_subparsers(dest="action", required=True),
        "send",
        webhook_send,
        "sign a webhook body with the app secret and POST it to the gateway",
    )
    sub.add_argument("file")
    sub.add_argument("--secret", help="app secret (default: PAGEWIRE_APP_SECRET or var/app_secret)")
    sub.add_argument("--url", help="gateway base URL (default http://127.0.0.1:8080)")

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
