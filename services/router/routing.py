"""Ingest: group a webhook's events by conversation, and store each group once under its lock.

One lock and one transaction per conversation group. Every insert is
idempotent (see store.py), so a redelivery, a retry after a 503, or the same
event reaching two replicas changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import FailedPrecondition, InvalidArgument
from pagewire.kit.timeutil import now_ms
from pagewire.proto import events_pb2
from services.router.mutex import ConversationLocks
from services.router.store import (
    Contact,
    Conversation,
    EventLog,
    Message,
    ParkedEvent,
    find_or_create_conversation,
    insert_ignoring_duplicates,
)

log = logging.getLogger("pagewire.router")

MAX_EVENTS_PER_CALL = 1000
PARKED_BATCH = 500
_KINDS_NEEDING_USER = {"message", "delivery", "read"}

Key = tuple[int, str, str]  # platform, page id, user id


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
            raise InvalidArgument(f"{where}.kind", "one of message, delivery, read, unsupported")
        if kind in _KINDS_NEEDING_USER and not event.user_id.strip():
            raise InvalidArgument(f"{where}.user_id", f"is required for a {kind}")


def _attachments_json(message: events_pb2.MessageEvent) -> str:
    return json.dumps(
        [
            {
                "type": a.type,
                "url": a.url,
                "title": a.title,
                "sticker_id": a.sticker_id,
                "payload_json": a.payload_json,
            }
            for a in message.attachments
        ],
        ensure_ascii=False,
    )


class Router:
    """Stores events; the only writer of conversations and messages."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        locks: ConversationLocks,
        pages: AccountLookup,
        *,
        group_concurrency: int = 8,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._locks = locks
        self._pages = pages
        self._limit = asyncio.Semaphore(group_concurrency)
        self._clock = clock

    async def ingest(self, events: Sequence[events_pb2.Event]) -> IngestResult:
        """Stores a webhook's events; returns only after every group has committed."""
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
                if account is None:
                    return await self._park_or_route(key, group)
                return await self._route(account, key, group)

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
        async with self._locks.hold(lock_name(key)):
            try:
                async with self._sessions() as session, session.begin():
                    result = await self._apply(session, account, key, events)
                    if parked_ids:
                        await session.execute(
                            delete(ParkedEvent).where(ParkedEvent.id.in_(parked_ids))
                        )
                    return result
            except DB_UNAVAILABLE as exc:
                raise unavailable(exc) from None

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
            log.info(
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
                    total.add(await self._route(account, key, events, parked_ids=ids))
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
                for label, model in (
                    ("", EventLog),
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
        self, session: AsyncSession, account: str, key: Key, events: Sequence[events_pb2.Event]
    ) -> IngestResult:
        platform, page_id, user_id = key
        platform_text = platform_name(platform)
        now = self._clock()
        result = IngestResult()
        conversation: Conversation | None = None
        if user_id:
            conversation = await find_or_create_conversation(
                session, account, platform_text, page_id, user_id, now
            )
            if conversation.account_id != account:
                # The page moved to another account; its conversations follow it.
                conversation.account_id = account
        for event in events:
            kind = event.WhichOneof("kind") or "unsupported"
            logged = await session.execute(
                insert_ignoring_duplicates(session, EventLog)
                .values(
                    platform=platform_text,
                    page_id=page_id,
                    user_id=user_id,
                    event_id=event.id,
                    kind=event.unsupported.kind if kind == "unsupported" else kind,
                    direction=events_pb2.Direction.Name(event.direction),
                    timestamp_ms=event.timestamp_ms,
                    conversation_id=conversation.id if conversation else None,
                    standby=event.standby,
                    raw_json=event.raw_json,
                    received_at_ms=event.received_at_ms,
                    stored_at_ms=now,
                )
                .returning(EventLog.id)
            )
            if logged.scalar_one_or_none() is None:
                result.duplicates += 1
                continue
            result.stored += 1
            if conversation is None:
                continue
            conversation.last_event_ms = max(conversation.last_event_ms, event.timestamp_ms)
            if kind == "message":
                await self._apply_message(session, conversation, event, now)
            elif kind == "delivery":
                await self._apply_delivery(session, conversation, event.delivery)
            elif kind == "read":
                await self._apply_read(session, conversation, event.read)
        return result

    async def _apply_message(
        self, session: AsyncSession, conversation: Conversation, event: events_pb2.Event, now: int
    ) -> None:
        message = event.message
        outbound = event.direction == events_pb2.OUTBOUND
        status = "RECEIVED"
        if outbound:
            status = "SENT"
            if conversation.read_watermark_ms >= event.timestamp_ms:
                status = "READ"
            elif conversation.delivery_watermark_ms >= event.timestamp_ms:
                status = "DELIVERED"
        inserted = await session.execute(
            insert_ignoring_duplicates(session, Message)
            .values(
                conversation_id=conversation.id,
                platform=conversation.platform,
                page_id=conversation.page_id,
                mid=message.mid or event.id,
                direction=events_pb2.Direction.Name(event.direction),
                text=message.text,
                attachments_json=_attachments_json(message),
                timestamp_ms=event.timestamp_ms,
                is_echo=message.is_echo,
                app_id=message.app_id,
                metadata_=message.metadata,
                quick_reply_payload=message.quick_reply_payload,
                reply_to_mid=message.reply_to_mid,
                status=status,
                standby=event.standby,
                created_at_ms=now,
            )
            .returning(Message.id)
        )
        if inserted.scalar_one_or_none() is not None:
            conversation.message_count += 1

    async def _apply_delivery(
        self, session: AsyncSession, conversation: Conversation, delivery: events_pb2.DeliveryEvent
    ) -> None:
        watermark = delivery.watermark_ms
        conversation.delivery_watermark_ms = max(conversation.delivery_watermark_ms, watermark)
        covered = [Message.timestamp_ms <= watermark]
        if delivery.mids:
            covered.append(Message.mid.in_(list(delivery.mids)))
        await session.execute(
            update(Message)
            .where(
                Message.conversation_id == conversation.id,
                Message.direction == "OUTBOUND",
                Message.status == "SENT",
                or_(*covered),
            )
            .values(status="DELIVERED")
        )

    async def _apply_read(
        self, session: AsyncSession, conversation: Conversation, read: events_pb2.ReadEvent
    ) -> None:
        watermark = read.watermark_ms
        if read.mid:
            # Instagram says which message was seen; everything up to it was seen too.
            seen = await session.execute(
                select(Message.timestamp_ms).where(
                    Message.conversation_id == conversation.id, Message.mid == read.mid
                )
            )
            watermark = max(watermark, seen.scalar_one_or_none() or 0)
        conversation.read_watermark_ms = max(conversation.read_watermark_ms, watermark)
        await session.execute(
            update(Message)
            .where(
                Message.conversation_id == conversation.id,
                Message.direction == "OUTBOUND",
                Message.status.in_(("SENT", "DELIVERED")),
                Message.timestamp_ms <= watermark,
            )
            .values(status="READ")
        )
