"""What a batch of log entries does to its conversations, worked out in memory, whatever the order.

The apply stage reads, in one statement each, the state a batch touches (its
conversations, locked; the stored messages, marks and edits of every mid it
names), and this module plays the batch's events against that state in log
order. The result is a `Plan`: rows to insert and rows to update, one list per
table, which the store writes with one statement per table, and the feed's
changes in the order they happened. No SQL here, and nothing is written twice:
every event of a conversation in the batch is folded into one row update.

Every kind is folded so the final state is a function of the set of events,
not of their order (guarantee 4):

- a message's text is its newest edit (highest num_edit, then timestamp, then
  event id) or its original; an unsend wins over everything and drops the text;
- edits, reactions and receipt marks aimed at a mid are kept even when that mid
  is not stored yet, and a message looks them up when it arrives;
- watermarks only move forward, and a message's status is what the final
  watermarks and marks give it (an Instagram read naming a message reads
  everything up to it);
- a person's reaction is the newest reaction event; the thread owner is the
  newest handover.

Messages read back from the Conversations API (`origin` history or gap repair) are
stored like webhooks' and deduplicated by the same mid. An import's old messages
are not news: they emit no MESSAGE_CREATED (nor CONVERSATION_CREATED for a
conversation only the import brought); the import's end marker (`history`) emits
one HISTORY_IMPORTED for the conversation instead. Gap repair's messages are news
Meta never delivered, and are announced like any webhook's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pagewire.contract import Origin, Platform
from pagewire.proto import events_pb2

DELIVERED, READ, DELETED = "delivered", "read", "deleted"
# What the person does that opens the Send API's messaging window (receipts do not).
USER_ACTIONS = frozenset({"message", "postback", "reaction", "referral", "optin"})

Key = tuple[str, str, str]  # platform name, page id, user id ("" for the page's own events)
MidKey = tuple[str, str, str]  # platform name, page id, mid


def event_kind(event: events_pb2.Event) -> str:
    """The stored kind: the oneof's name, or the unsupported item's own key."""
    kind = event.WhichOneof("kind") or "unsupported"
    return event.unsupported.kind if kind == "unsupported" else kind


def attachments_json(attachments: Iterable[dict[str, str]]) -> str:
    """The stored form of a message's attachments (inbound, echo and sent alike)."""
    return json.dumps(list(attachments), ensure_ascii=False)


def attachment(
    type_: str, url: str, title: str = "", sticker_id: str = "", payload_json: str = ""
) -> dict[str, str]:
    """One attachment as stored."""
    return {
        "type": type_,
        "url": url,
        "title": title,
        "sticker_id": sticker_id,
        "payload_json": payload_json,
    }


def message_row(
    *,
    conversation_id: int,
    platform: str,
    page_id: str,
    mid: str,
    direction: str,
    timestamp_ms: int,
    created_at_ms: int,
    text: str = "",
    original_text: str | None = None,
    attachments: str = "[]",
    status: str = "RECEIVED",
    kind: str = "message",
    **fields: Any,
) -> dict[str, Any]:
    """Every column of a stored message, the same shape for inbound messages, echoes and
    the router's own sends (one insert statement, cached, for all of them)."""
    row: dict[str, Any] = {
        "conversation_id": conversation_id,
        "platform": platform,
        "page_id": page_id,
        "mid": mid,
        "direction": direction,
        "text": text,
        "original_text": text if original_text is None else original_text,
        "attachments_json": attachments,
        "timestamp_ms": timestamp_ms,
        "is_echo": False,
        "app_id": "",
        "metadata": "",
        "quick_reply_payload": "",
        "reply_to_mid": "",
        "status": status,
        "standby": False,
        "created_at_ms": created_at_ms,
        "kind": kind,
        "payload": "",
        "deleted": False,
        "is_unsupported": False,
        "reply_to_story_url": "",
        "referral_json": "",
        "error_code": 0,
        "error_subcode": 0,
        "error_message": "",
        "idempotency_key": "",
        "sent_by": "",
        "origin": Origin.WEBHOOK.value,
    }
    unknown = set(fields) - set(row)
    if unknown:
        raise TypeError(f"not message columns: {sorted(unknown)}")
    row.update(fields)
    return row


@dataclass
class ConversationState:
    """A conversation row as locked by the apply transaction (or just created)."""

    id: int
    account_id: str
    platform: str
    page_id: str
    user_id: str
    fence: int
    last_event_ms: int = 0
    message_count: int = 0
    delivery_watermark_ms: int = 0
    read_watermark_ms: int = 0
    thread_owner_app_id: str = ""
    thread_owner_ms: int = 0
    last_inbound_ms: int = 0
    created: bool = False


@dataclass
class StoredMessage:
    """What the plan needs of a message already stored."""

    id: int
    conversation_id: int
    direction: str
    timestamp_ms: int
    text: str
    original_text: str
    deleted: bool


@dataclass
class Known:
    """The stored state of every mid a batch names."""

    messages: dict[MidKey, StoredMessage] = field(default_factory=dict)
    marks: dict[MidKey, set[str]] = field(default_factory=dict)
    edits: dict[MidKey, list[tuple[int, int, str, str]]] = field(default_factory=dict)
    # Comments by (platform, page, comment id).
    comments: dict[tuple[str, str, str], CommentState] = field(default_factory=dict)


@dataclass
class Entry:
    """A claimed log entry: its row id and its event."""

    row_id: int
    event: events_pb2.Event


# A change's message: a stored message's id, or the mid of one this plan inserts.
MessageRef = int | MidKey | None
# A change's comment: (platform, page, comment id); resolved to a row id once written.
CommentRef = tuple[str, str, str] | None
# A feed change before ids are known.
PlannedChange = tuple[str, int | None, MessageRef, int | None, CommentRef, int | None]
# A thread's key in a batch: the page and the post, written where a person's id would be.
THREAD = "~"


@dataclass
class ThreadState:
    """A comment thread's row as locked by the apply transaction (or just created)."""

    id: int
    account_id: str
    platform: str
    page_id: str
    post_id: str
    fence: int
    media_product_type: str = ""
    last_activity_ms: int = 0
    comment_count: int = 0
    created: bool = False


@dataclass
class CommentState:
    """Every column of a comment, as stored or as this batch folds it."""

    platform: str
    page_id: str
    comment_id: str
    thread_id: int
    stored_at_ms: int
    id: int | None = None
    parent_id: str = ""
    author_id: str = ""
    author_name: str = ""
    text: str = ""
    original_text: str = ""
    created_time_ms: int = 0
    edited_ms: int = 0
    edit_event_id: str = ""
    hidden: bool = False
    hidden_ms: int = 0
    hidden_event_id: str = ""
    removed: bool = False
    removed_ms: int = 0
    from_page: bool = False
    mention: bool = False
    seen_add: bool = False
    field: str = ""
    media_product_type: str = ""
    ad_id: str = ""
    ad_title: str = ""
    attachment_url: str = ""
    sent_by: str = ""

    def row(self) -> dict[str, Any]:
        """The columns to write (the id is the database's)."""
        out = dict(vars(self))
        out.pop("id")
        return out


@dataclass
class Plan:
    """Everything a batch writes, a list per table, and the feed's changes in order."""

    new_messages: dict[MidKey, dict[str, Any]] = field(default_factory=dict)
    # Stored messages whose text or deletion changed: id → columns.
    message_updates: dict[int, dict[str, Any]] = field(default_factory=dict)
    new_edits: list[dict[str, Any]] = field(default_factory=list)
    # Mids whose stored edits lose their text (the message was unsent).
    blanked_edits: set[MidKey] = field(default_factory=set)
    new_marks: set[tuple[str, str, str, str]] = field(default_factory=set)
    reactions: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    conversations: dict[int, ConversationState] = field(default_factory=dict)
    # Conversations whose stored outgoing messages may change status (receipts moved).
    status_sweeps: set[int] = field(default_factory=set)
    # (log row id, conversation id or None): the entries this plan applies.
    applied: list[tuple[int, int | None]] = field(default_factory=list)
    # Comment threads touched: id → state; comments to write (new or changed).
    threads: dict[int, ThreadState] = field(default_factory=dict)
    comments: dict[tuple[str, str, str], CommentState] = field(default_factory=dict)
    new_comment_edits: list[dict[str, Any]] = field(default_factory=list)
    # Comments whose stored edits lose their text (the comment was removed).
    blanked_comment_edits: set[tuple[str, str, str]] = field(default_factory=set)
    post_reactions: dict[tuple[str, str, str, str, str], dict[str, Any]] = field(
        default_factory=dict
    )
    # Contacts a history marker names (name on Messenger, username on Instagram): filled
    # only where the contact has none, so a profile Graph gave is never overwritten.
    contact_names: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # account → [(kind, conversation, message ref, event row, comment ref, thread)], in order.
    changes: dict[str, list[PlannedChange]] = field(default_factory=dict)

    def change(
        self,
        account: str,
        kind: str,
        conversation: int | None,
        message: MessageRef = None,
        event_row: int | None = None,
        *,
        comment: CommentRef = None,
        thread: int | None = None,
    ) -> None:
        self.changes.setdefault(account, []).append(
            (kind, conversation, message, event_row, comment, thread)
        )


class _Conversation:
    """One conversation's events folded into its state."""

    def __init__(self, plan: Plan, known: Known, conv: ConversationState, now: int) -> None:
        self.plan, self.known, self.conv, self.now = plan, known, conv, now
        self.account = conv.account_id
        self.created: list[dict[str, Any]] = []  # the messages this plan inserts here

    # -- lookups over what is stored and what this plan adds ----------------------------

    def _key(self, mid: str) -> MidKey:
        return (self.conv.platform, self.conv.page_id, mid)

    def marks(self, mid: str) -> set[str]:
        return self.known.marks.setdefault(self._key(mid), set())

    def _mark(self, mid: str, mark: str) -> None:
        if mark not in self.marks(mid):
            self.marks(mid).add(mark)
            self.plan.new_marks.add((*self._key(mid), mark))

    def edits(self, mid: str) -> list[tuple[int, int, str, str]]:
        return self.known.edits.setdefault(self._key(mid), [])

    def latest_text(self, mid: str, default: str) -> str:
        edits = self.edits(mid)
        return max(edits)[3] if edits else default

    def stored(self, mid: str) -> StoredMessage | None:
        return self.known.messages.get(self._key(mid))

    def new(self, mid: str) -> dict[str, Any] | None:
        return self.plan.new_messages.get(self._key(mid))

    def ref(self, mid: str) -> MessageRef:
        stored = self.stored(mid)
        if stored is not None:
            return stored.id
        return self._key(mid) if self.new(mid) is not None else None

    # -- the kinds ------------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        event, conv = entry.event, self.conv
        which = event.WhichOneof("kind")
        if which == "history":
            # The end of an import, not something the person or the Page did at its time:
            # the conversation's last event and messaging window stay as its messages say.
            self.history(entry)
            return
        conv.last_event_ms = max(conv.last_event_ms, event.timestamp_ms)
        if event.direction == events_pb2.INBOUND and which in USER_ACTIONS:
            conv.last_inbound_ms = max(conv.last_inbound_ms, event.timestamp_ms)
        if which == "message" and event.message.is_deleted:
            self.unsend(event.message.mid or event.id)
        elif which in ("message", "postback"):
            self.message(event)
        elif which == "edit":
            self.edit(event)
        elif which == "reaction":
            self.reaction(event)
        elif which == "delivery":
            self.delivery(event.delivery)
        elif which == "read":
            self.read(event.read)
        else:
            if which == "handover":
                self.handover(event)
            self.plan.change(self.account, "EVENT_STORED", conv.id, event_row=entry.row_id)

    def message(self, event: events_pb2.Event) -> None:
        conv = self.conv
        if event.WhichOneof("kind") == "postback":
            postback = event.postback
            mid, kind, text = postback.mid or event.id, "postback", postback.title
            fields: dict[str, Any] = {
                "payload": postback.payload,
                "referral_json": postback.referral_json,
            }
            files = "[]"
        else:
            message = event.message
            mid, kind, text = message.mid or event.id, "message", message.text
            fields = {
                "is_echo": message.is_echo,
                "app_id": message.app_id,
                "metadata": message.metadata,
                "quick_reply_payload": message.quick_reply_payload,
                "reply_to_mid": message.reply_to_mid,
                "is_unsupported": message.is_unsupported,
                "reply_to_story_url": message.reply_to_story_url,
                "referral_json": message.referral_json,
            }
            files = attachments_json(
                attachment(a.type, a.url, a.title, a.sticker_id, a.payload_json)
                for a in message.attachments
            )
        if self.stored(mid) is not None or self.new(mid) is not None:
            return  # already stored (for example our own send, matched by its echo)
        origin = Origin.from_proto(event.origin)
        row = self.plan.new_messages[self._key(mid)] = message_row(
            conversation_id=conv.id,
            platform=conv.platform,
            page_id=conv.page_id,
            mid=mid,
            direction=events_pb2.Direction.Name(event.direction),
            timestamp_ms=event.timestamp_ms,
            created_at_ms=self.now,
            text=text,
            attachments=files,
            kind=kind,
            standby=event.standby,
            origin=origin.value,
            **fields,
        )
        self.created.append(row)
        if origin is not Origin.HISTORY:
            # An import of thousands of old messages must not flood consumers' feeds: the
            # conversation's HISTORY_IMPORTED says once that they are readable.
            self.plan.change(self.account, "MESSAGE_CREATED", conv.id, self._key(mid))

    def history(self, entry: Entry) -> None:
        event, conv = entry.event, self.conv
        self.plan.change(self.account, "HISTORY_IMPORTED", conv.id, event_row=entry.row_id)
        name = event.history.user_name
        if not name.strip():
            return
        instagram = conv.platform == Platform.INSTAGRAM
        row = {
            "platform": conv.platform,
            "page_id": conv.page_id,
            "user_id": conv.user_id,
            "name": "" if instagram else name,
            "username": name if instagram else "",
            "timestamp_ms": event.timestamp_ms,
            "event_id": event.id,
        }
        key = (conv.platform, conv.page_id, conv.user_id)
        held = self.plan.contact_names.get(key)
        # Two markers in one batch (an import run again): the newest names the person,
        # whatever their order in the log.
        if held is None or (row["timestamp_ms"], row["event_id"]) > (
            held["timestamp_ms"],
            held["event_id"],
        ):
            self.plan.contact_names[key] = row

    def edit(self, event: events_pb2.Event) -> None:
        edit = event.edit
        text = "" if DELETED in self.marks(edit.mid) else edit.text
        self.plan.new_edits.append(
            {
                "platform": self.conv.platform,
                "page_id": self.conv.page_id,
                "mid": edit.mid,
                "event_id": event.id,
                "num_edit": edit.num_edit,
                "text": text,
                "timestamp_ms": event.timestamp_ms,
            }
        )
        self.edits(edit.mid).append((edit.num_edit, event.timestamp_ms, event.id, text))
        stored, new = self.stored(edit.mid), self.new(edit.mid)
        if stored is not None and not stored.deleted:
            stored.text = self.latest_text(edit.mid, stored.original_text)
            self.plan.message_updates[stored.id] = _columns(stored)
            self.plan.change(self.account, "MESSAGE_EDITED", stored.conversation_id, stored.id)
        elif new is not None and not new["deleted"]:
            self.plan.change(
                self.account, "MESSAGE_EDITED", new["conversation_id"], self._key(edit.mid)
            )

    def unsend(self, mid: str) -> None:
        self._mark(mid, DELETED)
        self.plan.blanked_edits.add(self._key(mid))
        self.known.edits[self._key(mid)] = [(n, t, e, "") for n, t, e, _ in self.edits(mid)]
        stored, new = self.stored(mid), self.new(mid)
        if stored is not None and not stored.deleted:
            stored.deleted, stored.text, stored.original_text = True, "", ""
            self.plan.message_updates[stored.id] = _columns(stored)
            self.plan.change(self.account, "MESSAGE_DELETED", stored.conversation_id, stored.id)
        elif new is not None and not new["deleted"]:
            self.plan.change(
                self.account, "MESSAGE_DELETED", new["conversation_id"], self._key(mid)
            )

    def reaction(self, event: events_pb2.Event) -> None:
        reaction = event.reaction
        key = (self.conv.platform, self.conv.page_id, reaction.mid, event.user_id)
        row = {
            "platform": self.conv.platform,
            "page_id": self.conv.page_id,
            "mid": reaction.mid,
            "user_id": event.user_id,
            "action": reaction.action,
            "reaction": reaction.reaction,
            "emoji": reaction.emoji,
            "timestamp_ms": event.timestamp_ms,
            "event_id": event.id,
        }
        held = self.plan.reactions.get(key)
        # One row per person and message in the statement: the newest of the batch; the
        # store keeps it only if it is newer than the stored one too.
        if held is None or (row["timestamp_ms"], row["event_id"]) > (
            held["timestamp_ms"],
            held["event_id"],
        ):
            self.plan.reactions[key] = row
        self.plan.change(self.account, "REACTION_CHANGED", self.conv.id, self.ref(reaction.mid))

    def delivery(self, delivery: events_pb2.DeliveryEvent) -> None:
        conv = self.conv
        conv.delivery_watermark_ms = max(conv.delivery_watermark_ms, delivery.watermark_ms)
        for mid in delivery.mids:
            self._mark(mid, DELIVERED)
        self.plan.status_sweeps.add(conv.id)

    def read(self, read: events_pb2.ReadEvent) -> None:
        conv = self.conv
        watermark = read.watermark_ms
        if read.mid:
            self._mark(read.mid, READ)
            stored, new = self.stored(read.mid), self.new(read.mid)
            if stored is not None:
                watermark = max(watermark, stored.timestamp_ms)
            elif new is not None:
                watermark = max(watermark, new["timestamp_ms"])
        conv.read_watermark_ms = max(conv.read_watermark_ms, watermark)
        self.plan.status_sweeps.add(conv.id)

    def handover(self, event: events_pb2.Event) -> None:
        handover, conv = event.handover, self.conv
        if handover.action not in ("pass_thread_control", "take_thread_control"):
            return
        if not handover.new_owner_app_id:
            return
        # Newest handover wins; the app id breaks a tie so the order of arrival cannot.
        mine = (event.timestamp_ms, handover.new_owner_app_id)
        if mine > (conv.thread_owner_ms, conv.thread_owner_app_id):
            conv.thread_owner_app_id, conv.thread_owner_ms = mine[1], mine[0]

    # -- the end of the batch -------------------------------------------------------------

    def finish(self) -> None:
        """Final text, deletion and status of the messages this plan inserts."""
        conv = self.conv
        mine = self.created
        for row in mine:
            marks = self.marks(row["mid"])
            if row["direction"] == "OUTBOUND" and READ in marks:
                # Instagram's read names a message: everything up to it was seen too.
                conv.read_watermark_ms = max(conv.read_watermark_ms, row["timestamp_ms"])
                self.plan.status_sweeps.add(conv.id)
        for row in mine:
            marks = self.marks(row["mid"])
            if DELETED in marks:
                row.update(deleted=True, text="", original_text="", attachments_json="[]")
            else:
                row["text"] = self.latest_text(row["mid"], row["original_text"])
            if row["direction"] == "OUTBOUND":
                row["status"] = outbound_status(
                    row["timestamp_ms"], marks, conv.delivery_watermark_ms, conv.read_watermark_ms
                )


class _Thread:
    """One thread's comments, reactions and mentions folded into their rows."""

    def __init__(self, plan: Plan, known: Known, thread: ThreadState, now: int) -> None:
        self.plan, self.known, self.thread, self.now = plan, known, thread, now
        self.account = thread.account_id

    def _comment(self, comment_id: str) -> tuple[CommentState, bool]:
        key = (self.thread.platform, self.thread.page_id, comment_id)
        state = self.plan.comments.get(key) or self.known.comments.get(key)
        if state is not None:
            self.plan.comments[key] = state
            return state, False
        state = CommentState(
            self.thread.platform, self.thread.page_id, comment_id, self.thread.id, self.now
        )
        self.plan.comments[key] = self.known.comments[key] = state
        self.thread.comment_count += 1
        self.plan.change(self.account, "COMMENT_CREATED", None, comment=key, thread=self.thread.id)
        return state, True

    def apply(self, entry: Entry) -> None:
        event = entry.event
        self.thread.last_activity_ms = max(self.thread.last_activity_ms, event.timestamp_ms)
        which = event.WhichOneof("kind")
        if which == "comment":
            self.comment(event)
        elif which == "post_reaction":
            self.reaction(event)
        elif which == "mention":
            state, _ = self._comment(
                event.mention.comment_id or f"caption:{event.mention.media_id}"
            )
            state.mention = True
            state.field = state.field or "mentions"

    def comment(self, event: events_pb2.Event) -> None:
        c, page = event.comment, self.thread.page_id
        # Descriptions are kept so that any order of items ends the same: the greatest
        # value wins (Meta sends one per comment and media; this only decides conflicts).
        if c.media_product_type > self.thread.media_product_type:
            self.thread.media_product_type = c.media_product_type
        state, _ = self._comment(c.comment_id)
        key = (state.platform, state.page_id, state.comment_id)
        for name in (
            "parent_id",
            "author_id",
            "author_name",
            "field",
            "media_product_type",
            "ad_id",
            "ad_title",
            "attachment_url",
        ):
            value = getattr(c, name)
            if value > getattr(state, name):
                setattr(state, name, value)
        if c.created_time_ms and not 0 < state.created_time_ms <= c.created_time_ms:
            state.created_time_ms = c.created_time_ms  # the earliest Meta says
        state.from_page = state.from_page or (bool(state.author_id) and state.author_id == page)
        stamp = (event.timestamp_ms, event.id)
        if c.verb == "add":
            if not state.seen_add:
                state.seen_add = True
                if not state.removed:
                    state.original_text = c.text
                    if not state.edited_ms:
                        state.text = c.text
        elif c.verb == "edited":
            self.plan.new_comment_edits.append(
                {
                    "platform": state.platform,
                    "page_id": state.page_id,
                    "comment_id": state.comment_id,
                    "event_id": event.id,
                    "text": "" if state.removed else c.text,
                    "timestamp_ms": event.timestamp_ms,
                }
            )
            if stamp > (state.edited_ms, state.edit_event_id):
                state.edited_ms, state.edit_event_id = stamp
                if not state.removed and state.text != c.text:
                    state.text = c.text
                    self.plan.change(
                        self.account, "COMMENT_EDITED", None, comment=key, thread=self.thread.id
                    )
        elif c.verb in ("hide", "unhide"):
            if stamp > (state.hidden_ms, state.hidden_event_id):
                state.hidden_ms, state.hidden_event_id = stamp
                hidden = c.verb == "hide"
                if hidden != state.hidden:
                    state.hidden = hidden
                    self.plan.change(
                        self.account, "COMMENT_HIDDEN", None, comment=key, thread=self.thread.id
                    )
        elif c.verb == "remove" and not state.removed:
            # Removed for good: its texts go, here and in its edit history.
            state.removed, state.removed_ms = True, event.timestamp_ms
            state.text = state.original_text = ""
            self.plan.blanked_comment_edits.add(key)
            self.plan.change(
                self.account, "COMMENT_REMOVED", None, comment=key, thread=self.thread.id
            )

    def reaction(self, event: events_pb2.Event) -> None:
        r = event.post_reaction
        key = (self.thread.platform, self.thread.page_id, r.post_id, r.comment_id, r.user_id)
        row = {
            "platform": key[0],
            "page_id": key[1],
            "post_id": r.post_id,
            "comment_id": r.comment_id,
            "user_id": r.user_id,
            "user_name": r.user_name,
            "reaction_type": r.reaction_type,
            "verb": r.verb,
            "timestamp_ms": event.timestamp_ms,
            "event_id": event.id,
        }
        held = self.plan.post_reactions.get(key)
        if held is None or (row["timestamp_ms"], row["event_id"]) > (
            held["timestamp_ms"],
            held["event_id"],
        ):
            self.plan.post_reactions[key] = row
        comment = (key[0], key[1], r.comment_id) if r.comment_id else None
        self.plan.change(
            self.account, "POST_REACTION_CHANGED", None, comment=comment, thread=self.thread.id
        )


def outbound_status(timestamp_ms: int, marks: set[str], delivered_ms: int, read_ms: int) -> str:
    """What receipts say of an outgoing message."""
    if READ in marks or read_ms >= timestamp_ms:
        return "READ"
    if DELIVERED in marks or delivered_ms >= timestamp_ms:
        return "DELIVERED"
    return "SENT"


def _columns(stored: StoredMessage) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "text": stored.text,
        "original_text": stored.original_text,
        "deleted": stored.deleted,
    }
    if stored.deleted:
        columns["attachments_json"] = "[]"
    return columns


def plan_batch(
    groups: dict[Key, list[Entry]],
    conversations: dict[Key, ConversationState],
    page_accounts: dict[tuple[str, str], str],
    known: Known,
    now: int,
    threads: dict[Key, ThreadState] | None = None,
) -> Plan:
    """The writes of a batch: `groups` are the entries to apply, by conversation key (the
    page's own events under user "", a thread's under "~<post>"); `conversations` and
    `threads` the locked rows of those keys; `page_accounts` the account of every page."""
    plan = Plan()
    for key, entries in groups.items():
        platform, page_id, user_id = key
        account = page_accounts[(platform, page_id)]
        if user_id.startswith(THREAD):
            thread = (threads or {})[key]
            thread.account_id = account
            plan.threads[thread.id] = thread
            folding = _Thread(plan, known, thread, now)
            for entry in entries:
                folding.apply(entry)
                plan.applied.append((entry.row_id, None))
            continue
        if not user_id:
            for entry in entries:
                plan.applied.append((entry.row_id, None))
                plan.change(account, "EVENT_STORED", None, event_row=entry.row_id)
            continue
        conv = conversations[key]
        conv.account_id = account  # a moved page's conversations follow it
        plan.conversations[conv.id] = conv
        # A conversation only an import brought is announced by its HISTORY_IMPORTED.
        if conv.created and any(e.event.origin != events_pb2.ORIGIN_HISTORY for e in entries):
            plan.change(account, "CONVERSATION_CREATED", conv.id)
        folding = _Conversation(plan, known, conv, now)
        for entry in entries:
            folding.apply(entry)
            plan.applied.append((entry.row_id, conv.id))
        folding.finish()
    # An edit inserted before its message's unsend in this batch loses its text too.
    for row in plan.new_edits:
        if (row["platform"], row["page_id"], row["mid"]) in plan.blanked_edits:
            row["text"] = ""
    for row in plan.new_comment_edits:
        if (row["platform"], row["page_id"], row["comment_id"]) in plan.blanked_comment_edits:
            row["text"] = ""
    return plan


def thread_of(event: events_pb2.Event) -> str | None:
    """The post (or media) a comment, post reaction or mention belongs to; None otherwise."""
    which = event.WhichOneof("kind")
    if which == "comment":
        return event.comment.post_id
    if which == "post_reaction":
        return event.post_reaction.post_id
    if which == "mention":
        return event.mention.media_id
    return None


def mids_of(events: Sequence[events_pb2.Event]) -> set[str]:
    """Every mid the events name: what the apply reads of messages, marks and edits."""
    mids: set[str] = set()
    for event in events:
        which = event.WhichOneof("kind")
        if which == "message":
            mids.add(event.message.mid or event.id)
        elif which == "postback":
            mids.add(event.postback.mid or event.id)
        elif which == "edit":
            mids.add(event.edit.mid)
        elif which == "reaction":
            mids.add(event.reaction.mid)
        elif which == "delivery":
            mids.update(event.delivery.mids)
        elif which == "read" and event.read.mid:
            mids.add(event.read.mid)
    mids.discard("")
    return mids


def comment_ids_of(events: Sequence[events_pb2.Event]) -> set[str]:
    """Every comment a thread's events name: what the apply reads of stored comments."""
    ids: set[str] = set()
    for event in events:
        which = event.WhichOneof("kind")
        if which == "comment":
            ids.add(event.comment.comment_id)
        elif which == "mention":
            ids.add(event.mention.comment_id or f"caption:{event.mention.media_id}")
    ids.discard("")
    return ids
