"""The apply stage: log entries into conversations, a batch at a time, in every replica.

A worker claims the oldest pending entries (many conversations per batch) for a
lease, takes one fence, then the batch's conversation locks in one pipelined
round trip without waiting — a conversation whose lock is busy is given back for
the holder or the next batch, never waited on — and applies everything it holds
in one transaction: the page accounts (share-locked), the conversations (row
locks, fence checked), what the batch's mids already have, then one statement
per table for the whole batch (services/router/planner.py decides, the store
writes). It marks the entries applied or parked, appends the feed, commits,
releases the locks in a second round trip and wakes the change feed.

A replica that dies with a claimed batch loses it after the lease: the entries
are pending again for whoever claims next, and applying them twice changes
nothing (every write is idempotent, every fold order-independent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from opentelemetry import context as otel_context
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from pagewire import contract
from pagewire.contract import MAX_KIND
from pagewire.kit import telemetry
from pagewire.kit.db import unavailable_reason
from pagewire.kit.errors import PagewireError
from pagewire.kit.timeutil import now_ms
from pagewire.normalize import renormalize
from pagewire.proto import events_pb2
from services.router import metrics, parking
from services.router.feed import FeedNotifier
from services.router.keys import key_of, lock_name
from services.router.mutex import ConversationLocks
from services.router.planner import (
    THREAD,
    ConversationState,
    Entry,
    Key,
    PlannedChange,
    ThreadState,
    comment_ids_of,
    event_kind,
    mids_of,
    plan_batch,
)
from services.router.profiles import ProfileFetcher
from services.router.store import comments as store_comments
from services.router.store import feed as store_feed
from services.router.store import log as store_log
from services.router.store import pages as store_pages
from services.router.store import state
from services.router.store.fences import next_fence

log = logging.getLogger("pagewire.router.apply")
tracer = telemetry.tracer("pagewire.router.apply")

# A test hook between taking the fence and writing: where a stalled holder stalls.
BeforeWrite = Callable[[Sequence[Key], int], Awaitable[None]]

# How long a busy conversation's entries wait before the next claim may take them.
BUSY_RETRY_MS = 100


@dataclass(frozen=True)
class ApplySettings:
    batch: int = 500
    lease_ms: int = 30_000
    workers: int = 2
    idle_poll_s: float = 0.5


@dataclass
class BatchResult:
    """What one batch came to."""

    claimed: int = 0
    applied: int = 0
    parked: int = 0
    released: int = 0  # busy, stale or unresolvable: given back
    dropped: int = 0  # appended while their page's purge ran


class Applier:
    """Claims, locks, fences and applies batches of log entries."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        locks: ConversationLocks,
        pages: parking.Pages,
        *,
        settings: ApplySettings = ApplySettings(),
        notifier: FeedNotifier | None = None,
        profiles: ProfileFetcher | None = None,
        clock: Callable[[], int] = now_ms,
        before_write: BeforeWrite | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._locks = locks
        self._pages = pages
        self.settings = settings
        self.notifier = notifier or FeedNotifier()
        self._profiles = profiles
        self._clock = clock
        self._before_write = before_write
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.stale_writes = 0
        # Batches claimed and not finished (their follow-ups included): tests wait on it.
        self.in_flight = 0

    # -- running ------------------------------------------------------------------------

    def wake(self) -> None:
        """Something was appended or unparked: idle workers look at once."""
        self._wakeup.set()

    def start(self) -> None:
        for number in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"apply-{number}"))

    async def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _work(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                result = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                reason = unavailable_reason(exc) or (
                    str(exc) if isinstance(exc, PagewireError) else None
                )
                if reason is None:
                    log.exception("apply batch failed")
                elif failures == 1:
                    log.warning("apply stage waiting for a dependency", extra={"reason": reason})
                await self._idle(min(5.0, self.settings.idle_poll_s * 2**failures))
                continue
            if failures:
                log.info("apply stage running again")
            failures = 0
            if result.applied + result.parked + result.dropped == 0:
                await self._idle(self.settings.idle_poll_s)

    async def _idle(self, seconds: float) -> None:
        """Until woken, or `seconds` pass (entries another replica appended, leases out)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()

    # -- one batch ----------------------------------------------------------------------

    async def run_once(self) -> BatchResult:
        """Claims and applies one batch; what it came to (nothing claimed: all zero)."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            claimed = await store_log.claim(
                session, self.settings.batch, now, self.settings.lease_ms
            )
        result = BatchResult(claimed=len(claimed))
        if not claimed:
            return result
        self.in_flight += 1
        try:
            try:
                await self._run(claimed, result)
            except Exception as exc:
                if unavailable_reason(exc) is not None or isinstance(exc, PagewireError):
                    raise  # a dependency is down: the whole batch waits for it
                log.exception("apply batch failed; applying its entries one by one")
                await self._isolate(claimed, result)
        finally:
            self.in_flight -= 1
        return result

    async def _isolate(self, claimed: Sequence[store_log.Claimed], result: BatchResult) -> None:
        """A batch the database refused for a reason that will not go away (a value, a bug):
        each entry alone, and the ones that still fail are kept as `failed` — raw item and
        all, listed by ListEvents, counted — so one entry never stalls the apply stage."""
        for item in claimed:
            alone = BatchResult(claimed=1)
            try:
                await self._run([item], alone)
            except Exception as exc:
                if unavailable_reason(exc) is not None or isinstance(exc, PagewireError):
                    raise
                metrics.APPLY_FAILED.inc()
                log.warning(
                    "log entry kept as failed: the database refuses to apply it",
                    extra={"row_id": item.row_id, "error": type(exc).__name__},
                )
                async with self._sessions() as session, session.begin():
                    await store_log.settle(
                        session, [(item.row_id, store_log.FAILED, None, 0)], self._clock()
                    )
            result.applied += alone.applied
            result.parked += alone.parked
            result.released += alone.released
            result.dropped += alone.dropped

    async def _run(self, claimed: Sequence[store_log.Claimed], result: BatchResult) -> None:
        # Its own trace, linked to each webhook whose events it applies.
        with tracer.start_as_current_span(
            "apply batch",
            context=otel_context.Context(),
            attributes={"pagewire.entries": len(claimed)},
            links=telemetry.links(c.trace_parent for c in claimed),
        ):
            try:
                await self._apply(claimed, result)
            except BaseException:
                # Nothing of the batch committed: give the entries back at once rather than
                # after the lease (a crash of the whole process is what the lease is for).
                with contextlib.suppress(Exception):
                    async with self._sessions() as session, session.begin():
                        await store_log.release(session, [c.row_id for c in claimed])
                raise

    async def _apply(self, claimed: Sequence[store_log.Claimed], result: BatchResult) -> None:
        groups: dict[Key, list[Entry]] = {}
        stored_at: dict[int, int] = {}
        renormalized: list[dict[str, object]] = []
        for item in claimed:
            event = events_pb2.Event.FromString(item.event or b"")
            if item.renormalize:
                event = _renormalized(item, event)
                renormalized.append(
                    {
                        "id": item.row_id,
                        "event": _without_raw(event),
                        "kind": event_kind(event)[:MAX_KIND],
                        "user_id": event.user_id,
                        "direction": events_pb2.Direction.Name(event.direction),
                    }
                )
            stored_at[item.row_id] = item.stored_at_ms
            groups.setdefault(key_of(event), []).append(Entry(item.row_id, event))
        accounts, unresolved = await self._pages.resolve({(k[0], k[1]) for k in groups})
        outcomes: list[tuple[int, str, int | None, int]] = []
        release_at = self._clock() + BUSY_RETRY_MS

        def give_back(entries: Sequence[Entry], delay: bool = True) -> None:
            for entry in entries:
                outcomes.append((entry.row_id, store_log.PENDING, None, release_at if delay else 0))
            result.released += len(entries)

        to_park: dict[Key, list[Entry]] = {}
        to_apply: dict[Key, list[Entry]] = {}
        for key, entries in groups.items():
            page = (key[0], key[1])
            if page in unresolved:
                give_back(entries)
            elif accounts.get(page) is None:
                to_park[key] = entries
            else:
                to_apply[key] = entries
        fence = await next_fence(self._engine)
        names = {lock_name(key): key for key in to_apply if key[2]}
        held = await self._locks.try_many(list(names), fence) if names else {}
        for name, key in names.items():
            if name not in held:
                metrics.APPLY_BUSY.inc()
                give_back(to_apply.pop(key))
        renew = asyncio.create_task(self._keep(held)) if held else None
        try:
            if self._before_write is not None:
                await self._before_write(list(to_apply), fence)
            touched = await self._write(
                to_apply, to_park, accounts, fence, outcomes, result, renormalized
            )
        finally:
            if renew is not None:
                renew.cancel()
            await self._locks.release_many(held)
        now = self._clock()
        for row_id, state_name, _, _ in outcomes:
            if state_name == store_log.APPLIED:
                metrics.APPLY_LAG.observe(max(0, now - stored_at[row_id]) / 1000)
        metrics.APPLY_BATCHES.labels("applied" if result.applied else "idle").inc()
        metrics.APPLIED.inc(result.applied)
        self.notifier.notify_all(touched)
        if self._profiles is not None:
            for platform, page_id, user_id in to_apply:
                if user_id:
                    self._profiles.schedule(platform, page_id, user_id)
        telemetry.annotate(
            applied=result.applied, parked=result.parked, released=result.released, fence=fence
        )

    async def _keep(self, held: dict[str, str]) -> None:
        """Renews the batch's locks every third of their lifetime while it works; a stalled
        process stalls this too, so its locks expire and the fence guards what it writes."""
        while True:
            await asyncio.sleep(
                self._locks.renew_period_s
            )  # a renewal period, not a synchronisation
            with contextlib.suppress(PagewireError):
                await self._locks.renew_many(held)

    async def _write(
        self,
        to_apply: dict[Key, list[Entry]],
        to_park: dict[Key, list[Entry]],
        accounts: dict[tuple[str, str], str | None],
        fence: int,
        outcomes: list[tuple[int, str, int | None, int]],
        result: BatchResult,
        renormalized: Sequence[dict[str, object]] = (),
    ) -> set[str]:
        """The batch's transaction; the accounts whose feed it changed."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            # What entries normalized again are now, whatever becomes of them below.
            await store_log.renormalized(session, renormalized)
            pages = {(k[0], k[1]) for k in (*to_apply, *to_park)}
            await parking.park_lock(session, {(k[0], k[1]) for k in to_park})
            current = await store_pages.accounts(session, pages, share=True)
            # Read after the locks above, so a purge that ran meanwhile is committed: an
            # entry it covers was appended while it ran, and goes as the purge said.
            purged = await store_pages.tombstones(session, pages)
            dropped = _drop_purged(purged, to_apply, to_park)
            await store_log.drop(session, dropped)
            result.dropped = len(dropped)
            for key in list(to_apply):
                account = current.get((key[0], key[1]))
                if not account:  # purged or disconnected meanwhile: park
                    to_park[key] = to_apply.pop(key)
                else:
                    accounts[(key[0], key[1])] = account
            for key in list(to_park):
                if current.get((key[0], key[1])):  # connected meanwhile: next batch
                    for entry in to_park.pop(key):
                        outcomes.append((entry.row_id, store_log.PENDING, None, 0))
                        result.released += 1
            conversations = await self._conversations(session, to_apply, accounts, now)
            threads = await self._threads(session, to_apply, accounts, now)
            for key in [k for k in to_apply if k[2]]:
                conv = threads[key] if key[2].startswith(THREAD) else conversations[key]
                if conv.fence > fence:
                    # A newer holder wrote here: this batch's lock expired while it
                    # stalled. Give its entries back; the next batch takes a new fence.
                    self.stale_writes += 1
                    metrics.STALE_WRITES.inc()
                    log.warning(
                        "stale batch's write refused; its entries go to the next batch",
                        extra={"fence": fence, "newer_fence": conv.fence},
                    )
                    for entry in to_apply.pop(key):
                        outcomes.append((entry.row_id, store_log.PENDING, None, 0))
                        result.released += 1
            mids = {
                (k[0], k[1], mid)
                for k, entries in to_apply.items()
                for mid in mids_of([e.event for e in entries])
            }
            known = await state.known(session, mids)
            known.comments = await store_comments.known_comments(
                session,
                {
                    (k[0], k[1], cid)
                    for k, entries in to_apply.items()
                    if k[2].startswith(THREAD)
                    for cid in comment_ids_of([e.event for e in entries])
                },
            )
            plan = plan_batch(
                to_apply,
                conversations,
                {p: a for p, a in accounts.items() if a is not None},
                known,
                now,
                threads,
            )
            new_ids, status_changed = await state.write_plan(session, plan, fence)
            comment_ids = await store_comments.write_plan(session, plan, fence)
            for row_id, conversation_id in plan.applied:
                outcomes.append((row_id, store_log.APPLIED, conversation_id, 0))
            for entries in to_park.values():
                for entry in entries:
                    outcomes.append((entry.row_id, store_log.PARKED, None, 0))
            result.applied = len(plan.applied)
            result.parked = sum(len(e) for e in to_park.values())
            await store_log.settle(session, outcomes, now)
            changes = _resolved(plan.changes, new_ids, comment_ids)
            for message_id, conversation_id in status_changed:
                account = plan.conversations[conversation_id].account_id
                changes.setdefault(account, []).append(
                    ("MESSAGE_STATUS_CHANGED", conversation_id, message_id, None, None, None)
                )
            await store_feed.record(session, changes, now)
        for key, entries in to_park.items():
            metrics.PARKED.labels(key[0].lower()).inc(len(entries))
        return set(changes)

    async def _conversations(
        self,
        session: AsyncSession,
        to_apply: dict[Key, list[Entry]],
        accounts: dict[tuple[str, str], str | None],
        now: int,
    ) -> dict[Key, ConversationState]:
        keys = sorted(k for k in to_apply if k[2] and not k[2].startswith(THREAD))
        found = await state.lock_conversations(session, keys)
        missing = {k: accounts[(k[0], k[1])] or "" for k in keys if k not in found}
        if missing:
            found.update(await state.create_conversations(session, missing, now))
            # A key another writer created meanwhile (the lock says it cannot; be sure).
            late = [k for k in missing if k not in found]
            found.update(await state.lock_conversations(session, late))
        return found

    async def _threads(
        self,
        session: AsyncSession,
        to_apply: dict[Key, list[Entry]],
        accounts: dict[tuple[str, str], str | None],
        now: int,
    ) -> dict[Key, ThreadState]:
        keys = sorted(k for k in to_apply if k[2].startswith(THREAD))
        found = await store_comments.lock_threads(session, keys)
        missing = {k: accounts[(k[0], k[1])] or "" for k in keys if k not in found}
        if missing:
            found.update(await store_comments.create_threads(session, missing, now))
            late = [k for k in missing if k not in found]
            found.update(await store_comments.lock_threads(session, late))
        return found


def _renormalized(item: store_log.Claimed, stored: events_pb2.Event) -> events_pb2.Event:
    """The entry normalized again from its raw item by this version's normalizer."""
    if stored.origin != events_pb2.ORIGIN_WEBHOOK:
        # Read back from the Conversations API: its raw item is Graph's, not a webhook's,
        # and the webhook normalizer has nothing to say about it.
        return stored
    stored.raw_json = item.raw_json or ""
    fresh = renormalize(stored)
    return contract.demoted(fresh) if contract.unstorable(fresh) else fresh


def _without_raw(event: events_pb2.Event) -> bytes:
    copy = events_pb2.Event()
    copy.CopyFrom(event)
    copy.raw_json = ""
    return copy.SerializeToString()


def _drop_purged(
    purged: dict[tuple[str, str], int],
    to_apply: dict[Key, list[Entry]],
    to_park: dict[Key, list[Entry]],
) -> list[int]:
    """Takes out of both the entries a purge tombstone covers; their row ids."""
    dropped: list[int] = []
    if not purged:
        return dropped
    for groups in (to_apply, to_park):
        for key in list(groups):
            up_to = purged.get((key[0], key[1]))
            if up_to is None:
                continue
            kept = [e for e in groups[key] if e.event.timestamp_ms > up_to]
            dropped.extend(e.row_id for e in groups[key] if e.event.timestamp_ms <= up_to)
            if kept:
                groups[key] = kept
            else:
                del groups[key]
    return dropped


def _resolved(
    changes: dict[str, list[PlannedChange]],
    new_ids: dict[tuple[str, str, str], int],
    comment_ids: dict[tuple[str, str, str], int],
) -> dict[str, list[store_feed.ChangeRow]]:
    """The plan's changes with the ids of the messages and comments it wrote; a change
    about a message that turned out to exist already (nothing inserted) is dropped."""
    out: dict[str, list[store_feed.ChangeRow]] = {}
    for account, items in changes.items():
        rows = out.setdefault(account, [])
        for kind, conversation_id, ref, event_row, comment, thread in items:
            message_id = new_ids.get(ref) if isinstance(ref, tuple) else ref
            if kind == "MESSAGE_CREATED" and message_id is None:
                continue
            comment_id = comment_ids.get(comment) if comment is not None else None
            rows.append((kind, conversation_id, message_id, event_row, comment_id, thread))
    return out


class LogMonitor:
    """Keeps the backlog gauges current (`pagewire_log_pending`, oldest pending age)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], period_s: float = 5.0) -> None:
        self._sessions = sessions
        self._period_s = period_s

    async def read(self) -> store_log.LogStatus:
        async with self._sessions() as session:
            status = await store_log.status(session, now_ms())
        metrics.LOG_PENDING.set(status.pending)
        metrics.LOG_PARKED.set(status.parked)
        age = (now_ms() - status.oldest_pending_ms) / 1000 if status.oldest_pending_ms else 0.0
        metrics.LOG_OLDEST_PENDING.set(max(0.0, age))
        return status

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await self.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._period_s)
