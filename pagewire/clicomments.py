"""`pagewire comments …` and `pagewire events reprocess`: comment threads from the command line.

Each command is one router RPC (ListComments, ReplyToComment, ModerateComment,
ReprocessEvents) over the CLI's mutual TLS, like the rest of `pagewire`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pagewire.cliformat import dump_json, iso, table
from pagewire.proto import router_pb2, router_pb2_grpc

Call = Callable[..., Awaitable[Any]]
_ACTIONS = {"hide": router_pb2.HIDE, "unhide": router_pb2.UNHIDE, "delete": router_pb2.DELETE}
PROGRESS_PERIOD_S = 0.5


def _state(comment: router_pb2.Comment) -> str:
    flags = []
    if comment.removed:
        flags.append("removed")
    if comment.hidden:
        flags.append("hidden")
    if comment.edits:
        flags.append(f"edited x{len(comment.edits)}")
    if comment.from_page:
        flags.append("page")
    if comment.mention:
        flags.append("mention")
    return ",".join(flags)


def _ref(args: argparse.Namespace, platforms: dict[str, int]) -> router_pb2.CommentRef:
    return router_pb2.CommentRef(
        platform=platforms[args.platform], page_id=args.page_id, comment_id=args.comment
    )


def handlers(call: Call, platforms: dict[str, int]) -> dict[str, Callable[..., Awaitable[str]]]:
    """The command handlers, given the CLI's RPC helper and its platform names."""

    def router(method: str, request: object) -> Awaitable[Any]:
        return call("router", router_pb2_grpc.RouterServiceStub, method, request)

    async def comments_list(args: argparse.Namespace) -> str:
        reply = await router(
            "ListComments",
            router_pb2.ListCommentsRequest(
                page_id=args.page_id,
                platform=platforms[args.platform] if args.platform else 0,
                post_id=args.post or "",
                author_id=args.author or "",
                page_size=args.limit,
            ),
        )
        if args.json:
            return dump_json(reply)
        rows = [
            (
                c.post_id,
                c.comment_id,
                c.parent_id,
                c.author_name or c.author_id,
                iso(c.created_time_ms) if c.created_time_ms else "",
                _state(c),
                c.text,
            )
            for c in reply.comments
        ]
        out = table(rows, ("POST", "COMMENT", "REPLY TO", "AUTHOR", "CREATED", "STATE", "TEXT"))
        for thread in reply.threads:
            if thread.reactions:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(thread.reactions.items()))
                out += f"\n{thread.post_id}: reactions {counts}"
        return out

    async def reply(args: argparse.Namespace, private: bool) -> str:
        answer = await router(
            "ReplyToComment",
            router_pb2.ReplyToCommentRequest(
                comment=_ref(args, platforms),
                text=args.text,
                private=private,
                idempotency_key=args.idempotency_key or secrets.token_urlsafe(16),
            ),
        )
        if args.json:
            return dump_json(answer)
        line = router_pb2.SendState.Name(answer.state)
        if answer.reply.comment_id:
            line += f": reply {answer.reply.comment_id}"
        if answer.mid:
            line += f": message {answer.mid}"
        if answer.error_message:
            line += f" — {answer.error_code}/{answer.error_subcode}: {answer.error_message}"
        return line + (" [replayed]" if answer.replayed else "")

    async def comments_reply(args: argparse.Namespace) -> str:
        return await reply(args, private=False)

    async def comments_private_reply(args: argparse.Namespace) -> str:
        return await reply(args, private=True)

    def moderate(action: str) -> Callable[[argparse.Namespace], Awaitable[str]]:
        async def run(args: argparse.Namespace) -> str:
            answer = await router(
                "ModerateComment",
                router_pb2.ModerateCommentRequest(
                    comment=_ref(args, platforms),
                    action=_ACTIONS[action],
                    idempotency_key=args.idempotency_key or secrets.token_urlsafe(16),
                ),
            )
            if args.json:
                return dump_json(answer)
            line = f"{action}: {router_pb2.SendState.Name(answer.state)}"
            if answer.error_message:
                line += f" — {answer.error_code}/{answer.error_subcode}: {answer.error_message}"
            return line + (" [replayed]" if answer.replayed else "")

        return run

    async def events_reprocess(args: argparse.Namespace) -> str:
        marked = (
            await router(
                "ReprocessEvents",
                router_pb2.ReprocessEventsRequest(
                    page_id=args.page_id or "",
                    platform=platforms[args.platform] if args.platform else 0,
                    kinds=args.kind,
                    since_ms=_since(args.since),
                ),
            )
        ).marked
        if args.json and not args.wait:
            return f'{{"marked": {marked}}}'
        return await _progress(router, marked, tty=sys.stdout.isatty() and not args.json)

    return {
        "list": comments_list,
        "reply": comments_reply,
        "private-reply": comments_private_reply,
        "hide": moderate("hide"),
        "unhide": moderate("unhide"),
        "delete": moderate("delete"),
        "reprocess": events_reprocess,
    }


def _since(value: str | None) -> int:
    """`--since`: ms since the epoch, or an ISO date/time (UTC when no offset)."""
    if not value:
        return 0
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise SystemExit(f"pagewire: --since {value!r}: give ms or an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


async def _progress(router: Callable[[str, object], Awaitable[Any]], marked: int, tty: bool) -> str:
    """Follows the router's backlog of entries to normalize again until it is empty."""
    if not marked:
        return "nothing to reprocess"
    started = time.monotonic()
    last_line = ""
    while True:
        status = await router("GetLogStatus", router_pb2.GetLogStatusRequest())
        left = min(marked, status.renormalizing)
        done = marked - left
        if tty:
            width = 30
            filled = int(width * done / marked)
            bar = "#" * filled + "-" * (width - filled)
            print(f"\r[{bar}] {done}/{marked}", end="", flush=True)
        else:
            line = f"reprocessed {done}/{marked}"
            if line != last_line:
                print(line, flush=True)
                last_line = line
        if left == 0:
            break
        await asyncio.sleep(PROGRESS_PERIOD_S)  # the display's refresh period
    if tty:
        print()
    return f"{marked} event(s) normalized again and applied in {time.monotonic() - started:.1f}s"


def register(
    groups: Any,
    command: Callable[..., argparse.ArgumentParser],
    call: Call,
    platforms: dict[str, int],
    events: Any,
) -> None:
    """Adds `comments …` to the CLI's groups and `reprocess` to its `events` group."""
    run = handlers(call, platforms)
    comments = groups.add_parser("comments", help="comment threads of posts and media")
    actions = comments.add_subparsers(dest="action", required=True)

    def page(sub: argparse.ArgumentParser, *, comment: bool = True) -> None:
        sub.add_argument("--platform", choices=sorted(platforms), default="facebook")
        sub.add_argument("--page-id", required=True, help="Page id or Instagram account id")
        if comment:
            sub.add_argument("--comment", required=True, help="Meta's comment id")
            sub.add_argument("--idempotency-key", help="the same key never acts twice")

    sub = command(actions, "list", run["list"], "comments of a page, a post or an author")
    page(sub, comment=False)
    sub.set_defaults(platform=None)
    sub.add_argument("--post", help="only this post (Facebook) or media (Instagram)")
    sub.add_argument("--author", help="only this author's comments")
    sub.add_argument("--limit", type=int, default=100)
    for name, help_ in (
        ("reply", "reply publicly under a comment"),
        ("private-reply", "message the comment's author (once, within 7 days)"),
    ):
        sub = command(actions, name, run[name], help_)
        page(sub)
        sub.add_argument("--text", required=True)
    for name in ("hide", "unhide", "delete"):
        page(command(actions, name, run[name], f"{name} a comment through Graph"))

    sub = command(
        events,
        "reprocess",
        run["reprocess"],
        "normalize kept raw items again with the current code and apply them",
    )
    sub.add_argument("--page-id")
    sub.add_argument("--platform", choices=sorted(platforms))
    sub.add_argument("--kind", action="append", default=[], help="a stored kind (repeatable)")
    sub.add_argument("--since", help="only items from then on (ms, or an ISO date)")
    sub.add_argument("--wait", action="store_true", help="with --json: wait until applied")
