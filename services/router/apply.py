"""Applying one conversation's events inside its transaction, whatever order they came in.

Every kind is written so the final state is a function of the set of events,
not of their order (guarantee 4):

- a message's text is its newest edit (highest num_edit, then timestamp, then
  event id) or its original; an unsend wins over everything and drops the text;
- edits, reactions and receipt marks aimed at a mid are kept even when that
  mid is not stored yet, and a message looks them up when it arrives;
- watermarks only move forward, and a message arriving under a watermark is
  stored with the status the watermark gives it;
- a person's reaction is the newest reaction event; the thread owner is the
  newest handover.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pagewire.kit.db import insert_ignoring
from pagewire.kit.db import upsert_insert as dialect_insert
from pagewire.proto import events_pb2
from services.router.store import (
    Conversation,
    EventLog,
    Message,
    MessageEdit,
    MessageMark,
    Reaction,
    insert_ignoring_duplicates,
)

DELIVERED, READ, DELETED = "delivered", "read", "deleted"
# Every column of a stored message, so each insert has the same shape (one cached statement).
_MESSAGE_DEFAULTS: dict[str, object] = {
    "attachments_json": "[]",
    "is_echo": False,
    "app_id": "",
    "metadata": "",
    "quick_reply_payload": "",
    "reply_to_mid": "",
    "payload": "",
    "is_unsupported": False,
    "reply_to_story_url": "",
    "referral_json": "",
    "error_code": 0,
    "error_subcode": 0,
    "error_message": "",
    "idempotency_key": "",
}
# What the person does that opens the Send API's messaging window (receipts do not).
_USER_ACTIONS = {"message", "postback", "reaction", "referral", "optin"}


@dataclass
class Applied:
    """What one group's transaction did: counts, and the changes for the account's feed."""

    stored: int = 0
    duplicates: int = 0
    # (kind, conversation id, message id, event row id) in the order they happened.
    changes: list[tuple[str, int | None, int | None, int | None]] = field(default_factory=list)

    def change(
        self,
        kind: str,
        conversation: int | None,
        message: int | None = None,
        event_row: int | None = None,
    ) -> None:
        self.changes.append((kind, conversation, message, event_row))


def event_kind(event: events_pb2.Event) -> str:
    """The stored kind: the oneof's name, or the unsupported item's own key."""
    kind = event.WhichOneof("kind") or "unsupported"
    return event.unsupported.kind if kind == "unsupported" else kind


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


class Applier:
    """Writes one group's events in one session; the caller holds the lock and the fence."""

    def __init__(
        self, session: AsyncSession, conversation: Conversation | None, platform: str, now: int
    ) -> None:
        self.s = session
        self.conv = conversation
        self.platform = platform
        self.page_id = conversation.page_id if conversation else ""
        self.now = now
        self.out = Applied()
        # Marks and edits of the group's mids, read once up front and kept current as the
        # group writes them, instead of a query per message.
        self._mark_cache: dict[str, set[str]] = {}
        self._edit_cache: dict[str, list[tuple[int, int, str, str]]] = {}

    async def apply_all(self, events: list[events_pb2.Event]) -> None:
        """Logs the group's events in one statement (their unique ids make redelivery a
        no-op), then applies each newly logged one in order."""
        if not events:
            return
        rows = [
            {
                "platform": self.platform,
                "page_id": event.page_id,
                "user_id": event.user_id,
                "event_id": event.id,
                "kind": event_kind(event),
                "direction": events_pb2.Direction.Name(event.direction),
                "timestamp_ms": event.timestamp_ms,
                "conversation_id": self.conv.id if self.conv else None,
                "standby": event.standby,
                "raw_json": event.raw_json,
                "received_at_ms": event.received_at_ms,
                "stored_at_ms": self.now,
            }
            for event in events
        ]
        logged = await insert_ignoring(
            self.s, EventLog.__table__, rows, returning=("event_id", "id")
        )
        new = {event_id: row_id for event_id, row_id in logged}
        self.page_id = events[0].page_id
        await self._prefetch(events)
        for event in events:
            # pop: the same id twice in one call is stored once, counted once as a duplicate.
            row_id = new.pop(event.id, None)
            if row_id is None:
                self.out.duplicates += 1
                continue
            self.out.stored += 1
            await self._apply_one(event, row_id)

    async def _apply_one(self, event: events_pb2.Event, row_id: int) -> None:
        conv = self.conv
        if conv is None:
            self.out.change("EVENT_STORED", None, event_row=row_id)
            return
        conv.last_event_ms = max(conv.last_event_ms, event.timestamp_ms)
        which = event.WhichOneof("kind")
        if event.direction == events_pb2.INBOUND and which in _USER_ACTIONS:
            conv.last_inbound_ms = max(conv.last_inbound_ms, event.timestamp_ms)
        if which == "message" and event.message.is_deleted:
            await self._unsend(event.message.mid or event.id)
        elif which == "message":
            await self._message(event)
        elif which == "postback":
            await self._message(event)
        elif which == "edit":
            await self._edit(event)
        elif which == "reaction":
            await self._reaction(event)
        elif which == "delivery":
            await self._delivery(event.delivery)
        elif which == "read":
            await self._read(event.read)
        else:
            if which == "handover":
                self._handover(event)
            self.out.change("EVENT_STORED", conv.id, event_row=row_id)

    # -- messages -----------------------------------------------------------------------

    async def _prefetch(self, events: list[events_pb2.Event]) -> None:
        mids: set[str] = set()
        for event in events:
            which = event.WhichOneof("kind")
            if which == "message":
                mids.add(event.message.mid or event.id)
            elif which == "postback":
                mids.add(event.postback.mid or event.id)
            elif which == "edit":
                mids.add(event.edit.mid)
            elif which == "delivery":
                mids.update(event.delivery.mids)
            elif which == "read" and event.read.mid:
                mids.add(event.read.mid)
        mids.discard("")
        if not mids:
            return
        for mid in mids:
            self._mark_cache[mid] = set()
            self._edit_cache[mid] = []
        wanted = list(mids)
        marks = await self.s.execute(
            select(MessageMark.mid, MessageMark.mark).where(
                MessageMark.platform == self.platform,
                MessageMark.page_id == self.page_id,
                MessageMark.mid.in_(wanted),
            )
        )
        for mid, mark in marks.all():
            self._mark_cache[mid].add(mark)
        edits = await self.s.execute(
            select(
                MessageEdit.mid,
                MessageEdit.num_edit,
                MessageEdit.timestamp_ms,
                MessageEdit.event_id,
                MessageEdit.text,
            ).where(
                MessageEdit.platform == self.platform,
                MessageEdit.page_id == self.page_id,
                MessageEdit.mid.in_(wanted),
            )
        )
        for mid, num_edit, timestamp_ms, event_id, text in edits.all():
            self._edit_cache[mid].append((num_edit, timestamp_ms, event_id, text))

    async def _marks(self, mid: str) -> set[str]:
        cached = self._mark_cache.get(mid)
        if cached is not None:
            return cached
        rows = await self.s.execute(
            select(MessageMark.mark).where(
                MessageMark.platform == self.platform,
                MessageMark.page_id == self.page_id,
                MessageMark.mid == mid,
            )
        )
        return set(rows.scalars())

    async def _mark(self, mid: str, mark: str) -> None:
        await self.s.execute(
            insert_ignoring_duplicates(self.s, MessageMark).values(
                platform=self.platform, page_id=self.page_id, mid=mid, mark=mark
            )
        )
        if mid in self._mark_cache:
            self._mark_cache[mid].add(mark)

    async def _message(self, event: events_pb2.Event) -> None:
        conv = self.conv
        assert conv is not None
        outbound = event.direction == events_pb2.OUTBOUND
        if event.WhichOneof("kind") == "postback":
            postback = event.postback
            mid, kind, text = postback.mid or event.id, "postback", postback.title
            values = {"payload": postback.payload, "referral_json": postback.referral_json}
        else:
            message = event.message
            mid, kind, text = message.mid or event.id, "message", message.text
            values = {
                "attachments_json": _attachments_json(message),
                "is_echo": message.is_echo,
                "app_id": message.app_id,
                "metadata": message.metadata,
                "quick_reply_payload": message.quick_reply_payload,
                "reply_to_mid": message.reply_to_mid,
                "is_unsupported": message.is_unsupported,
                "reply_to_story_url": message.reply_to_story_url,
                "referral_json": message.referral_json,
            }
        marks = await self._marks(mid)
        status = "RECEIVED"
        if outbound:
            if READ in marks or conv.read_watermark_ms >= event.timestamp_ms:
                status = "READ"
            elif DELIVERED in marks or conv.delivery_watermark_ms >= event.timestamp_ms:
                status = "DELIVERED"
            else:
                status = "SENT"
        deleted = DELETED in marks
        current = "" if deleted else await self._latest_edit_text(mid, default=text)
        if deleted:
            values["attachments_json"] = "[]"
        row = {**_MESSAGE_DEFAULTS, **values}
        row.update(
            conversation_id=conv.id,
            platform=self.platform,
            page_id=self.page_id,
            mid=mid,
            kind=kind,
            direction=events_pb2.Direction.Name(event.direction),
            text=current,
            original_text="" if deleted else text,
            deleted=deleted,
            timestamp_ms=event.timestamp_ms,
            status=status,
            standby=event.standby,
            created_at_ms=self.now,
        )
        inserted = await insert_ignoring(self.s, Message.__table__, [row], returning=("id",))
        message_id = inserted[0][0] if inserted else None
        if message_id is None:
            return  # the mid is already stored (for example our own send, matched by its echo)
        conv.message_count += 1
        self.out.change("MESSAGE_CREATED", conv.id, message_id)
        if outbound and READ in marks:
            # Instagram's read names a message: everything up to it was seen too.
            await self._advance_read(event.timestamp_ms)

    async def _latest_edit_text(self, mid: str, default: str) -> str:
        """The text of the newest edit: highest num_edit, then timestamp, then event id."""
        edits = self._edit_cache.get(mid)
        if edits is None:
            rows = await self.s.execute(
                select(
                    MessageEdit.num_edit,
                    MessageEdit.timestamp_ms,
                    MessageEdit.event_id,
                    MessageEdit.text,
                ).where(
                    MessageEdit.platform == self.platform,
                    MessageEdit.page_id == self.page_id,
                    MessageEdit.mid == mid,
                )
            )
            edits = [tuple(row) for row in rows.all()]  # type: ignore[misc]
        return max(edits)[3] if edits else default

    async def _stored_message(self, mid: str) -> Message | None:
        return (
            await self.s.execute(
                select(Message).where(
                    Message.platform == self.platform,
                    Message.page_id == self.page_id,
                    Message.mid == mid,
                )
            )
        ).scalar_one_or_none()

    async def _edit(self, event: events_pb2.Event) -> None:
        edit = event.edit
        deleted = DELETED in await self._marks(edit.mid)
        await self.s.execute(
            insert_ignoring_duplicates(self.s, MessageEdit).values(
                platform=self.platform,
                page_id=self.page_id,
                mid=edit.mid,
                event_id=event.id,
                num_edit=edit.num_edit,
                text="" if deleted else edit.text,
                timestamp_ms=event.timestamp_ms,
            )
        )
        if edit.mid in self._edit_cache:
            self._edit_cache[edit.mid].append(
                (edit.num_edit, event.timestamp_ms, event.id, "" if deleted else edit.text)
            )
        message = await self._stored_message(edit.mid)
        if message is None or message.deleted:
            return
        message.text = await self._latest_edit_text(edit.mid, default=message.original_text)
        self.out.change("MESSAGE_EDITED", message.conversation_id, message.id)

    async def _unsend(self, mid: str) -> None:
        await self._mark(mid, DELETED)
        await self.s.execute(
            update(MessageEdit)
            .where(
                MessageEdit.platform == self.platform,
                MessageEdit.page_id == self.page_id,
                MessageEdit.mid == mid,
            )
            .values(text="")
        )
        if mid in self._edit_cache:
            self._edit_cache[mid] = [(n, t, e, "") for n, t, e, _ in self._edit_cache[mid]]
        message = await self._stored_message(mid)
        if message is None or message.deleted:
            return
        message.deleted = True
        message.text = message.original_text = ""
        message.attachments_json = "[]"
        self.out.change("MESSAGE_DELETED", message.conversation_id, message.id)

    async def _reaction(self, event: events_pb2.Event) -> None:
        reaction = event.reaction
        insert = dialect_insert(self.s.bind.dialect.name)(Reaction).values(
            platform=self.platform,
            page_id=self.page_id,
            mid=reaction.mid,
            user_id=event.user_id,
            action=reaction.action,
            reaction=reaction.reaction,
            emoji=reaction.emoji,
            timestamp_ms=event.timestamp_ms,
            event_id=event.id,
        )
        newer = or_(
            Reaction.timestamp_ms < insert.excluded.timestamp_ms,
            and_(
                Reaction.timestamp_ms == insert.excluded.timestamp_ms,
                Reaction.event_id < insert.excluded.event_id,
            ),
        )
        await self.s.execute(
            insert.on_conflict_do_update(
                index_elements=["platform", "page_id", "mid", "user_id"],
                set_={
                    "action": insert.excluded.action,
                    "reaction": insert.excluded.reaction,
                    "emoji": insert.excluded.emoji,
                    "timestamp_ms": insert.excluded.timestamp_ms,
                    "event_id": insert.excluded.event_id,
                },
                where=newer,
            )
        )
        message = await self._stored_message(reaction.mid)
        assert self.conv is not None
        self.out.change("REACTION_CHANGED", self.conv.id, message.id if message else None)

    # -- receipts -----------------------------------------------------------------------

    async def _set_status(self, status: str, covered, from_statuses: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        assert self.conv is not None
        changed = await self.s.execute(
            update(Message)
            .where(
                Message.conversation_id == self.conv.id,
                Message.direction == "OUTBOUND",
                Message.status.in_(from_statuses),
                covered,
            )
            .values(status=status)
            .returning(Message.id)
        )
        for message_id in changed.scalars():
            self.out.change("MESSAGE_STATUS_CHANGED", self.conv.id, message_id)

    async def _delivery(self, delivery: events_pb2.DeliveryEvent) -> None:
        conv = self.conv
        assert conv is not None
        conv.delivery_watermark_ms = max(conv.delivery_watermark_ms, delivery.watermark_ms)
        for mid in delivery.mids:
            await self._mark(mid, DELIVERED)
        covered = Message.timestamp_ms <= conv.delivery_watermark_ms
        if delivery.mids:
            covered = or_(covered, Message.mid.in_(list(delivery.mids)))
        await self._set_status("DELIVERED", covered, ("SENT",))

    async def _read(self, read: events_pb2.ReadEvent) -> None:
        watermark = read.watermark_ms
        if read.mid:
            await self._mark(read.mid, READ)
            seen = await self._stored_message(read.mid)
            if seen is not None:
                watermark = max(watermark, seen.timestamp_ms)
        await self._advance_read(watermark)

    async def _advance_read(self, watermark: int) -> None:
        conv = self.conv
        assert conv is not None
        conv.read_watermark_ms = max(conv.read_watermark_ms, watermark)
        await self._set_status(
            "READ", Message.timestamp_ms <= conv.read_watermark_ms, ("SENT", "DELIVERED")
        )

    # -- thread control -----------------------------------------------------------------

    def _handover(self, event: events_pb2.Event) -> None:
        conv = self.conv
        handover = event.handover
        if conv is None or handover.action not in ("pass_thread_control", "take_thread_control"):
            return
        if not handover.new_owner_app_id:
            return
        # Newest handover wins; the app id breaks a tie so the order of arrival cannot.
        mine = (event.timestamp_ms, handover.new_owner_app_id)
        if mine > (conv.thread_owner_ms, conv.thread_owner_app_id):
            conv.thread_owner_app_id = handover.new_owner_app_id
            conv.thread_owner_ms = event.timestamp_ms
