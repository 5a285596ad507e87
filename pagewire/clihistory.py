"""`pagewire pages history` and `pagewire pages repair-gaps`: past conversations from Graph.

`history` asks subscriptions to start (or resume) a page's import and follows it with
GetPage until it ends: a progress bar on a terminal, a line per change otherwise. The
import runs in the service, not here: interrupting this command stops only the display.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pagewire.cliformat import dump_json
from pagewire.proto import subscriptions_pb2, subscriptions_pb2_grpc

Call = Callable[..., Awaitable[Any]]
PROGRESS_PERIOD_S = 0.5
BAR_WIDTH = 30
_STATE = {
    subscriptions_pb2.HISTORY_PENDING: "pending",
    subscriptions_pb2.HISTORY_RUNNING: "running",
    subscriptions_pb2.HISTORY_DONE: "done",
    subscriptions_pb2.HISTORY_FAILED: "failed",
}
# A repair pass reads Graph for every page; it answers when the pass is over.
REPAIR_TIMEOUT_S = 600.0


def history_cell(page: subscriptions_pb2.Page) -> str:
    """The HISTORY column of `pages list`."""
    if not page.HasField("history") or not page.history.state:
        return ""
    h = page.history
    state = _STATE.get(h.state, "unknown")
    if h.state == subscriptions_pb2.HISTORY_FAILED:
        return f"failed: {h.error}"
    if h.state == subscriptions_pb2.HISTORY_DONE:
        return f"done: {h.conversations_done} conv, {h.messages_read} msgs"
    if h.state == subscriptions_pb2.HISTORY_PENDING:
        return state
    return f"running: {_progress_words(h)}"


def _progress_words(h: subscriptions_pb2.History) -> str:
    total = f"{h.conversations_total}" + ("" if h.conversations_total else "?")
    words = (
        f"{h.conversations_done}/{total} conversations, {h.messages_read} messages"
        f" ({h.messages_stored} new), {h.graph_calls} Graph calls"
    )
    if h.error:
        words += f"; {h.error}"
    return words


def handlers(call: Call, platforms: dict[str, int]) -> dict[str, Callable[..., Awaitable[str]]]:
    def subscriptions(method: str, request: object, timeout: float | None = None) -> Awaitable[Any]:
        stub = subscriptions_pb2_grpc.SubscriptionsServiceStub
        if timeout is None:
            return call("subscriptions", stub, method, request)
        return call("subscriptions", stub, method, request, timeout)

    async def pages_history(args: argparse.Namespace) -> str:
        platform = platforms[args.platform]
        reply = await subscriptions(
            "ImportHistory",
            subscriptions_pb2.ImportHistoryRequest(
                platform=platform, page_id=args.page_id, days=args.days or 0, restart=args.restart
            ),
        )
        if args.no_wait:
            return dump_json(reply) if args.json else f"history import {history_cell_of(reply)}"
        history = await _follow(
            subscriptions, platform, args.page_id, tty=sys.stdout.isatty() and not args.json
        )
        if args.json:
            return dump_json(history)
        if history.state == subscriptions_pb2.HISTORY_FAILED:
            raise _failed(args.page_id, history)
        seconds = max(0, history.finished_at_ms - history.started_at_ms) / 1000
        return (
            f"history of page {args.page_id} imported ({history.days} days):"
            f" {history.conversations_done} conversation(s), {history.messages_read}"
            f" message(s) read, {history.messages_stored} new, {history.graph_calls} Graph"
            f" call(s) in {seconds:.1f}s"
        )

    async def pages_repair_gaps(args: argparse.Namespace) -> str:
        request = subscriptions_pb2.RepairGapsRequest()
        if args.page_id:
            if not args.platform:
                raise SystemExit("pagewire: --page-id needs --platform")
            request = subscriptions_pb2.RepairGapsRequest(
                platform=platforms[args.platform], page_id=args.page_id
            )
        reply = await subscriptions("RepairGaps", request, REPAIR_TIMEOUT_S)
        if args.json:
            return dump_json(reply)
        lines = [
            f"checked {reply.conversations_checked} conversation(s) on {reply.pages} page(s):"
            f" {reply.gaps_filled} message(s) Meta never delivered, now stored"
        ]
        lines += [f"  could not check {error}" for error in reply.errors]
        return "\n".join(lines)

    return {"history": pages_history, "repair-gaps": pages_repair_gaps}


def history_cell_of(reply: subscriptions_pb2.ImportHistoryResponse) -> str:
    return _STATE.get(reply.history.state, "unknown")


def _failed(page_id: str, history: subscriptions_pb2.History) -> SystemExit:
    return SystemExit(
        f"pagewire: history import of page {page_id} failed after {history.messages_read}"
        f" message(s): {history.error} (run `pagewire pages history` again to resume)"
    )


async def _follow(
    subscriptions: Callable[..., Awaitable[Any]], platform: int, page_id: str, *, tty: bool
) -> subscriptions_pb2.History:
    """Polls GetPage until the import is done or failed, showing its progress."""
    last_line = ""
    started = time.monotonic()
    while True:
        reply = await subscriptions(
            "GetPage", subscriptions_pb2.GetPageRequest(platform=platform, page_id=page_id)
        )
        history = reply.page.history
        state = _STATE.get(history.state, "unknown")
        ended = history.state in (subscriptions_pb2.HISTORY_DONE, subscriptions_pb2.HISTORY_FAILED)
        if tty:
            total = max(history.conversations_total, 1)
            filled = int(BAR_WIDTH * min(history.conversations_done, total) / total)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = f"\r[{bar}] {state} {_progress_words(history)} {time.monotonic() - started:.0f}s"
            print(f"{line}\x1b[K", end="", flush=True)
        else:
            line = f"{state}: {_progress_words(history)}"
            if line != last_line:
                print(line, flush=True)
                last_line = line
        if ended:
            break
        await asyncio.sleep(PROGRESS_PERIOD_S)  # the display's refresh period
    if tty:
        print()
    return history


def register(
    pages: Any,
    command: Callable[..., argparse.ArgumentParser],
    call: Call,
    platforms: dict[str, int],
) -> None:
    """Adds `history` and `repair-gaps` to the CLI's `pages` group."""
    run = handlers(call, platforms)
    sub = command(pages, "history", run["history"], "import a page's past conversations from Graph")
    sub.add_argument("--platform", choices=sorted(platforms), default="facebook")
    sub.add_argument("--page-id", required=True, help="Page id or Instagram account id")
    sub.add_argument("--days", type=int, help="how far back (default 90)")
    sub.add_argument(
        "--restart", action="store_true", help="start from the first conversation again"
    )
    sub.add_argument("--no-wait", action="store_true", help="start it and return")
    sub = command(
        pages,
        "repair-gaps",
        run["repair-gaps"],
        "store messages Meta has but never delivered as webhooks (recent conversations)",
    )
    sub.add_argument("--platform", choices=sorted(platforms))
    sub.add_argument("--page-id", help="only this page (default: every subscribed page)")
