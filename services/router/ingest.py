"""The ACK path: validate a webhook's events and append them to the log with group commit.

`Ingest` returns once its events are committed in the log, and no later. While
one commit is in flight, every call that arrives waits for the next one, which
writes them all in one transaction with one multi-row statement: the cost of a
commit is shared by everything that arrived meanwhile. Duplicates (the unique
event id) and a purged page's old events are dropped by that same statement,
before any lock is taken. The commit runs in a task of its own, so a caller that
gives up (its deadline passed) never leaves a connection inside a transaction.

An event the router cannot store as its kind (an over-long id or mid, a NUL, a
message without its person) is appended as `unsupported` with its raw JSON,
counted, and never fails the call; only a structurally broken event (no page, no
id, no kind, an unknown platform or origin, a history marker that is not the
history import's) is INVALID_ARGUMENT — a producer's bug. Which caller may append
which origin is the servicer's check, before this (services/router/access.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DataError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire import contract
from pagewire.kit import telemetry
from pagewire.kit.errors import InvalidArgument
from pagewire.kit.timeutil import now_ms
from pagewire.proto import events_pb2
from services.router import metrics
from services.router.planner import event_kind
from services.router.store import log as store_log

log = logging.getLogger("pagewire.router.ingest")

# Events per commit at most; what arrives beyond it waits for the commit after.
MAX_EVENTS_PER_COMMIT = 5000


def validate(events: Sequence[events_pb2.Event]) -> list[events_pb2.Event]:
    """The events to append: structural faults refuse the whole call (naming the first
    bad field, before anything is stored); unstorable content is demoted to unsupported."""
    if not events:
        raise InvalidArgument("events", "at least one event is required")
    if len(events) > contract.MAX_EVENTS_PER_CALL:
        raise InvalidArgument("events", f"at most {contract.MAX_EVENTS_PER_CALL} events per call")
    out = []
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if event.platform not in (events_pb2.FACEBOOK, events_pb2.INSTAGRAM):
            raise InvalidArgument(f"{where}.platform", "must be FACEBOOK or INSTAGRAM")
        if not event.page_id.strip():
            raise InvalidArgument(f"{where}.page_id", "is required")
        if len(event.page_id) > contract.MAX_PAGE_ID:
            raise InvalidArgument(f"{where}.page_id", f"at most {contract.MAX_PAGE_ID} characters")
        if not event.id or len(event.id) > contract.MAX_EVENT_ID:
            raise InvalidArgument(
                f"{where}.id", f"is required (at most {contract.MAX_EVENT_ID} characters)"
            )
        if event.direction not in (events_pb2.INBOUND, events_pb2.OUTBOUND):
            raise InvalidArgument(f"{where}.direction", "must be INBOUND or OUTBOUND")
        if event.WhichOneof("kind") is None:
            raise InvalidArgument(f"{where}.kind", "an event needs one kind (message, read, ...)")
        try:
            origin = contract.Origin.from_proto(event.origin)
        except ValueError:
            raise InvalidArgument(
                f"{where}.origin", "must be ORIGIN_WEBHOOK, ORIGIN_HISTORY or ORIGIN_GAP_REPAIR"
            ) from None
        if event.WhichOneof("kind") == "history" and origin is not contract.Origin.HISTORY:
            raise InvalidArgument(f"{where}.origin", "a history marker is ORIGIN_HISTORY")
        reason = contract.unstorable(event)
        if reason is not None:
            metrics.DEMOTED.labels(event.WhichOneof("kind") or "none").inc()
            log.warning(
                "event kept raw: it cannot be stored as its kind",
                extra={"event_index": i, "reason": reason},
            )
            event = contract.demoted(event)
        out.append(event)
    return out


def _row(event: events_pb2.Event, trace_parent: str) -> dict[str, Any]:
    raw = event.raw_json
    # The raw item has a column of its own; the applied form does not carry it twice.
    event.raw_json = ""
    blob = event.SerializeToString()
    event.raw_json = raw
    return {
        "platform": contract.Platform.from_proto(event.platform).value,
        "page_id": event.page_id,
        "user_id": event.user_id,
        "event_id": event.id,
        "kind": event_kind(event)[: contract.MAX_KIND],
        "direction": events_pb2.Direction.Name(event.direction),
        "timestamp_ms": event.timestamp_ms,
        "standby": event.standby,
        "raw_json": raw,
        "event": blob,
        "received_at_ms": event.received_at_ms,
        "trace_parent": trace_parent,
    }


@dataclass
class Appended:
    """What an Ingest call's events came to: new in the log, or already there."""

    stored: int = 0
    duplicates: int = 0


@dataclass
class _Waiting:
    rows: list[dict[str, Any]]
    done: asyncio.Future[Appended]


class Appender:
    """Group commit of Ingest calls into the log: one commit in flight at a time."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_commit: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = now_ms,
        max_events_per_commit: int = MAX_EVENTS_PER_COMMIT,
    ) -> None:
        self._sessions = sessions
        self._on_commit = on_commit
        self._clock = clock
        self._max = max_events_per_commit
        self._queue: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None

    async def ingest(self, events: Sequence[events_pb2.Event]) -> Appended:
        """Appends a webhook's events; returns once they are committed in the log."""
        started = time.monotonic()
        try:
            checked = validate(events)
            parent = telemetry.traceparent()
            waiting = _Waiting(
                [_row(e, parent) for e in checked], asyncio.get_running_loop().create_future()
            )
            self._queue.append(waiting)
            if self._committer is None or self._committer.done():
                self._committer = asyncio.create_task(self._commit_all(), name="group-commit")
            # shield: a caller giving up does not cancel the commit others wait on.
            result = await asyncio.shield(waiting.done)
        finally:
            metrics.INGEST_SECONDS.observe(time.monotonic() - started)
        for event in events:
            # The oneof's name, not an unsupported item's own key: labels stay a small set.
            kind = event.WhichOneof("kind") or "unsupported"
            platform = contract.Platform.from_proto(event.platform).label
            metrics.EVENTS_INGESTED.labels(platform, kind).inc()
        telemetry.annotate(
            event_count=len(events), stored=result.stored, duplicates=result.duplicates
        )
        return result

    async def _commit_all(self) -> None:
        """Commits whatever is queued, again and again, until nothing is."""
        while self._queue:
            group: list[_Waiting] = []
            count = 0
            while self._queue and (not group or count + len(self._queue[0].rows) <= self._max):
                waiting = self._queue.pop(0)
                group.append(waiting)
                count += len(waiting.rows)
            await self._commit(group)

    async def _commit(self, group: list[_Waiting]) -> None:
        try:
            new = await self._append([row for w in group for row in w.rows])
        except DataError:
            if len(group) > 1:
                # One call's value the database refuses must not fail the others with it.
                for waiting in group:
                    await self._commit([waiting])
                return
            _fail(group, InvalidArgument("events", "holds a value the database cannot store"))
            return
        except Exception as exc:
            # Each waiting call raises it; the server's error mapping turns a database that
            # cannot take the work (down, read-only, full) into UNAVAILABLE with one line.
            _fail(group, exc)
            return
        seen: set[tuple[str, str, str]] = set()
        stored = 0
        for waiting in group:
            result = Appended()
            for row in waiting.rows:
                key = (row["platform"], row["page_id"], row["event_id"])
                if key in new and key not in seen:
                    seen.add(key)
                    result.stored += 1
                    metrics.EVENTS_STORED.labels(row["platform"].lower()).inc()
                else:
                    result.duplicates += 1
                    metrics.DUPLICATES.labels(row["platform"].lower()).inc()
            stored += result.stored
            if not waiting.done.done():
                waiting.done.set_result(result)
        metrics.COMMIT_EVENTS.observe(sum(len(w.rows) for w in group))
        if stored:
            self._on_commit()

    async def _append(self, rows: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        async with self._sessions() as session, session.begin():
            return await store_log.append(session, rows, self._clock())

    async def close(self) -> None:
        """Lets the commit in flight finish (on shutdown)."""
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)


def _fail(group: list[_Waiting], exc: BaseException) -> None:
    for waiting in group:
        if not waiting.done.done():
            waiting.done.set_exception(exc)
            waiting.done.exception()  # retrieved: the caller may have given up already
