"""Ingest: group a webhook's events by conversation, and store each group once under its lock.

One lock and one transaction per conversation group. Every insert is
idempotent (see store.py), so a redelivery, a retry after a 503, or the same
event reaching two replicas changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import DataError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.kit import telemetry
from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import Aborted, FailedPrecondition, InvalidArgument
from pagewire.kit.timeutil import now_ms
from pagewire.proto import events_pb2
from services.router import feed, metrics
from services.router.apply import Applied, Applier
from services.router.feed import FeedNotifier
from services.router.fencing import Fences, StaleFence
from services.router.mutex import ConversationLocks
from services.router.profiles import ProfileFetcher
from services.router.store import (
    Change,
    Contact,
    Conversation,
    EventLog,
    Message,
    MessageEdit,
    MessageMark,
    ParkedEvent,
    Reaction,
    find_or_create_conversation,
    insert_ignoring_duplicates,
)

log = logging.getLogger("pagewire.router")
tracer = telemetry.tracer("pagewire.router")

MAX_EVENTS_PER_CALL = 1000
PARKED_BATCH = 500
_KINDS_NEEDING_USER = {"message", "delivery", "read", "postback", "reaction", "edit"}

Key = tuple[int, str, str]  # platform, page id, user id
BeforeWrite = Callable[[Key, int], Awaitable[None]]
FENCE_ATTEMPTS = 5


class AccountLookup(Protocol):
    """Answers which account a page belongs to (None: not connected)."""

    async def account_for(
        self, platform: int, page_id: str, *, fresh: bool = False
    ) -> str | None: ...

    def forget(self, platform: int, page_id: str) -> None: ...


@dataclass
class IngestResult:
    """Counts of what happened to a call's events."""

    stored: int = 0
    duplicates: int = 0
    parked: int = 0

    def add(self, other: IngestResult) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.parked += other.parked


def platform_name(platform: int) -> str:
    return events_pb2.Platform.Name(platform)


def conversation_key(event: events_pb2.Event) -> Key:
    """(platform, page, user): the user is the sender inbound and the recipient of an echo."""
    return (event.platform, event.page_id, event.user_id)


def _label(platform: int) -> str:
    """The platform as a metric label (facebook, instagram)."""
    return events_pb2.Platform.Name(platform).lower()


def _group_attributes(key: Key, count: int) -> dict[str, str | int]:
    """A group's span attributes: the page, and the conversation only as a hash."""
    return {
        "pagewire.platform": _label(key[0]),
        "pagewire.page_id": key[1],
        "pagewire.conversation.key_hash": telemetry.key_hash(lock_name(key)),
        "pagewire.event_count": count,
    }


def lock_name(key: Key) -> str:
    """The lock's name inside the `pagewire:lock:{…}` hash tag."""
    platform, page_id, user_id = key
    return f"{platform_name(platform).lower()}:{page_id}:{user_id}"


def validate_events(events: Sequence[events_pb2.Event]) -> None:
    """Rejects the whole call, before anything is stored, naming the first bad field."""
    if not events:
        raise InvalidArgument("events", "at least one event is required")
    if len(events) > MAX_EVENTS_PER_CALL:
        raise InvalidArgument("events", f"at most {MAX_EVENTS_PER_CALL} events per call")
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if event.platform not in (events_pb2.FACEBOOK, events_pb2.INSTAGRAM):
            raise InvalidArgument(f"{where}.platform", "must be FACEBOOK or INSTAGRAM")
        if not event.page_id.strip():
            raise InvalidArgument(f"{where}.page_id", "is required")
        if len(event.page_id) > 128 or len(event.user_id) > 128:
            raise InvalidArgument(f"{where}.page_id", "ids are at most 128 characters")
        if not event.id or len(event.id) > 512:
            raise InvalidArgument(f"{where}.id", "is required (at most 512 characters)")
        if event.direction not in (events_pb2.INBOUND, events_pb2.OUTBOUND):
            raise InvalidArgument(f"{where}.direction", "must be INBOUND or OUTBOUND")
        kind = event.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(f"{where}.kind", "an event needs one kind (message, read, ...)")
        if kind in _KINDS_NEEDING_USER and not event.user_id.strip():
            raise InvalidArgument(f"{where}.user_id", f"is required for a {kind}")


class Router:
    """Stores events; the only writer of conversations and messages."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        locks: ConversationLocks,
        pages: AccountLookup,
        *,
        fences: Fences,
        notifier: FeedNotifier | None = None,
        group_concurrency: int = 8,
        clock: Callable[[], int] = now_ms,
        before_write: BeforeWrite | None = None,
        profiles: ProfileFetcher | None = None,
    ) -> None:
        self._sessions = sessions
        self._locks = locks
        self._pages = pages
        self._fences = fences
        self.notifier = notifier or FeedNotifier()
        self._limit = asyncio.Semaphore(group_concurrency)
        self._clock = clock
        # A test hook between taking the fence and writing: where a stalled holder stalls.
        self._before_write = before_write
        self.stale_writes = 0
        self._profiles = profiles

    async def ingest(self, events: Sequence[events_pb2.Event]) -> IngestResult:
        """Stores a webhook's events; returns only after every group has committed."""
        started = time.monotonic()
        try:
            result = await self._ingest(events)
        finally:
            metrics.INGEST_SECONDS.observe(time.monotonic() - started)
        for event in events:
            # The oneof's name, not an unsupported item's own key: labels stay a small set.
            kind = event.WhichOneof("kind") or "unsupported"
            metrics.EVENTS_INGESTED.labels(_label(event.platform), kind).inc()
        telemetry.annotate(
            event_count=len(events),
            stored=result.stored,
            duplicates=result.duplicates,
            parked=result.parked,
        )
        return result

    async def _ingest(self, events: Sequence[events_pb2.Event]) -> IngestResult:
        validate_events(events)
        groups: dict[Key, list[events_pb2.Event]] = {}
        for event in events:
            groups.setdefault(conversation_key(event), []).append(event)
        accounts: dict[tuple[int, str], str | None] = {}
        for platform, page_id, _ in groups:
            if (platform, page_id) not in accounts:
                accounts[(platform, page_id)] = await self._pages.account_for(platform, page_id)

        async def one(key: Key, group: list[events_pb2.Event]) -> IngestResult:
            async with self._limit:
                account = accounts[(key[0], key[1])]
                with tracer.start_as_current_span(
                    "conversation group", attributes=_group_attributes(key, len(group))
                ):
                    if account is None:
                        result = await self._park_or_route(key, group)
                    else:
                        result = await self._route(account, key, group)
                    telemetry.annotate(
                        connected=account is not None,
                        stored=result.stored,
                        duplicates=result.duplicates,
                        parked=result.parked,
                    )
                platform = _label(key[0])
                metrics.EVENTS_STORED.labels(platform).inc(result.stored)
                metrics.DUPLICATES.labels(platform).inc(result.duplicates)
                metrics.PARKED.labels(platform).inc(result.parked)
                return result

        outcomes = await asyncio.gather(
            *(one(key, group) for key, group in groups.items()), return_exceptions=True
        )
        total = IngestResult()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            total.add(outcome)
        return total

    async def _route(
        self,
        account: str,
        key: Key,
        events: Sequence[events_pb2.Event],
        parked_ids: Sequence[int] = (),
    ) -> IngestResult:
        """One lock, one fence, one transaction for a conversation group; a stale fence
        (this holder's lock expired and another wrote meanwhile) is retried afresh."""
        for _ in range(FENCE_ATTEMPTS):
            async with self._locks.hold(lock_name(key)) as lease:
                try:
                    fence = await self._fences.next()
                    # Taken while provably holding the lock, so every later holder's
                    # fence is larger than this one.
                    if not await lease.still_held():
                        continue
                    if self._before_write is not None:
                        await self._before_write(key, fence)
                    async with self._sessions() as session, session.begin():
                        applied = await self._apply(session, account, key, events, fence)
                        if parked_ids:
                            await session.execute(
                                delete(ParkedEvent).where(ParkedEvent.id.in_(parked_ids))
                            )
                except StaleFence as stale:
                    self.stale_writes += 1
                    metrics.STALE_WRITES.inc()
                    log.warning(
                        "stale lock holder's write rejected; retrying under a new lock",
                        extra={"fence": stale.mine, "newer_fence": stale.newer},
                    )
                    continue
                except DB_UNAVAILABLE as exc:
                    raise unavailable(exc) from None
                except DataError:
                    raise InvalidArgument(
                        "events", "holds a value the database cannot store (a NUL character?)"
                    ) from None
            if applied.changes:
                self.notifier.notify(account)
            if self._profiles is not None and key[2]:
                self._profiles.schedule(platform_name(key[0]), key[1], key[2])
            return IngestResult(stored=applied.stored, duplicates=applied.duplicates)
        raise Aborted("conversation lock was lost repeatedly; retry later")

    async def _park_or_route(self, key: Key, events: Sequence[events_pb2.Event]) -> IngestResult:
        """Parks events of an unconnected page; re-checks under the page's park lock so an
        event cannot be parked after that page's parked events were routed."""
        platform, page_id, _ = key
        async with self._locks.hold(f"park:{platform_name(platform).lower()}:{page_id}"):
            account = await self._pages.account_for(platform, page_id, fresh=True)
            if account is not None:
                return await self._route(account, key, events)
            now = self._clock()
            result = IngestResult()
            try:
                async with self._sessions() as session, session.begin():
                    for event in events:
                        inserted = await session.execute(
                            insert_ignoring_duplicates(session, ParkedEvent)
                            .values(
                                platform=platform_name(platform),
                                page_id=page_id,
                                event_id=event.id,
                                kind=event.WhichOneof("kind") or "",
                                event=event.SerializeToString(),
                                raw_json=event.raw_json,
                                received_at_ms=event.received_at_ms,
                                parked_at_ms=now,
                            )
                            .returning(ParkedEvent.id)
                        )
                        if inserted.scalar_one_or_none() is None:
                            result.duplicates += 1
                        else:
                            result.parked += 1
            except DB_UNAVAILABLE as exc:
                raise unavailable(exc) from None
        if result.parked:
            # Debug: pagewire_events_parked_total counts them, and an unconnected page that
            # keeps receiving would otherwise log on every delivery.
            log.debug(
                "parked events for unconnected page",
                extra={
                    "platform": platform_name(platform),
                    "page_id": page_id,
                    "count": result.parked,
                },
            )
        return result

    async def route_parked(self, platform: int, page_id: str) -> IngestResult:
        """Routes every event parked for a page that is now connected, oldest first."""
        if platform not in (events_pb2.FACEBOOK, events_pb2.INSTAGRAM):
            raise InvalidArgument("platform", "must be FACEBOOK or INSTAGRAM")
        if not page_id.strip():
            raise InvalidArgument("page_id", "is required")
        self._pages.forget(platform, page_id)
        account = await self._pages.account_for(platform, page_id, fresh=True)
        if account is None:
            raise FailedPrecondition(f"page {page_id} is not connected")
        total = IngestResult()
        async with self._locks.hold(f"park:{platform_name(platform).lower()}:{page_id}"):
            while True:
                async with self._sessions() as session:
                    rows = (
                        await session.execute(
                            select(ParkedEvent.id, ParkedEvent.event)
                            .where(
                                ParkedEvent.platform == platform_name(platform),
                                ParkedEvent.page_id == page_id,
                            )
                            .order_by(ParkedEvent.id)
                            .limit(PARKED_BATCH)
                        )
                    ).all()
                if not rows:
                    break
                groups: dict[Key, tuple[list[events_pb2.Event], list[int]]] = {}
                for row_id, blob in rows:
                    event = events_pb2.Event.FromString(blob)
                    events, ids = groups.setdefault(conversation_key(event), ([], []))
                    events.append(event)
                    ids.append(row_id)
                for key, (events, ids) in groups.items():
                    routed = await self._route(account, key, events, parked_ids=ids)
                    metrics.PARKED_ROUTED.labels(_label(platform)).inc(routed.stored)
                    total.add(routed)
        if total.stored or total.duplicates:
            log.info(
                "routed parked events",
                extra={
                    "platform": platform_name(platform),
                    "page_id": page_id,
                    "routed": total.stored,
                },
            )
        return total

    async def purge_page(self, platform: int, page_id: str) -> dict[str, int]:
        """Deletes every row stored for a page, children first (disconnect --purge)."""
        name = platform_name(platform)
        counts: dict[str, int] = {}
        async with self._locks.hold(f"park:{name.lower()}:{page_id}"):
            async with self._sessions() as session, session.begin():
                conversations = select(Conversation.id).where(
                    Conversation.platform == name, Conversation.page_id == page_id
                )
                page_events = select(EventLog.id).where(
                    EventLog.platform == name, EventLog.page_id == page_id
                )
                await session.execute(
                    delete(Change).where(
                        or_(
                            Change.conversation_id.in_(conversations),
                            Change.event_row_id.in_(page_events),
                        )
                    )
                )
                for label, model in (
                    ("", EventLog),
                    ("", MessageEdit),
                    ("", Reaction),
                    ("", MessageMark),
                    ("messages", Message),
                    ("conversations", Conversation),
                    ("", Contact),
                    ("parked", ParkedEvent),
                ):
                    result = await session.execute(
                        delete(model).where(model.platform == name, model.page_id == page_id)
                    )
                    if label:
                        counts[label] = result.rowcount
        self._pages.forget(platform, page_id)
        log.info("purged page", extra={"platform": name, "page_id": page_id, **counts})
        return counts

    async def _apply(
        self,
        session: AsyncSession,
        account: str,
        key: Key,
        events: Sequence[events_pb2.Event],
        fence: int,
    ) -> Applied:
        platform, page_id, user_id = key
        now = self._clock()
        conversation: Conversation | None = None
        created = False
        if user_id:
            conversation, created = await find_or_create_conversation(
                session, account, platform_name(platform), page_id, user_id, now
            )
            if conversation.fence > fence:
                # A newer lock holder already wrote here: this holder's lock expired.
                raise StaleFence(conversation.fence, fence)
            conversation.fence = fence
            if conversation.account_id != account:
                # The page moved to another account; its conversations follow it.
                conversation.account_id = account
        applier = Applier(session, conversation, platform_name(platform), now)
        if created and conversation is not None:
            applier.out.change("CONVERSATION_CREATED", conversation.id)
        await applier.apply_all(list(events))
        await session.flush()
        await feed.record(session, account, applier.out.changes, now)
        return applier.out
