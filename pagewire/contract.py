"""The event contract between the gateway (producer) and the router (consumer), written once.

What an `events.v1.Event` may hold so that the router can store it as its kind:
the platform names, the origins, the length of every id and mid the router keeps
in a column, the kinds that need a person, and what a stored text may not
contain. The gateway (webhooks) and subscriptions (history import, gap repair)
bound what they emit with these numbers; the router checks the same numbers and
stores anything that breaks them as `unsupported` with its raw JSON — never a
reason to fail a webhook (Meta would redeliver it for ever).
"""

from __future__ import annotations

from enum import StrEnum

from pagewire.proto import events_pb2


class Platform(StrEnum):
    """A Meta platform; the value is what the router's tables store."""

    FACEBOOK = "FACEBOOK"
    INSTAGRAM = "INSTAGRAM"

    @classmethod
    def from_proto(cls, value: int) -> Platform:
        """The platform of an `events.v1.Platform` number; ValueError for any other."""
        if value == events_pb2.FACEBOOK:
            return cls.FACEBOOK
        if value == events_pb2.INSTAGRAM:
            return cls.INSTAGRAM
        raise ValueError(f"not a platform: {value}")

    @classmethod
    def parse(cls, value: str) -> Platform:
        """From a stored name or a lower-case label (`facebook`, `instagram`)."""
        return cls(value.upper())

    @property
    def proto(self) -> int:
        return events_pb2.FACEBOOK if self is Platform.FACEBOOK else events_pb2.INSTAGRAM

    @property
    def label(self) -> str:
        """Lower case: metric labels, lock names, CLI arguments."""
        return self.value.lower()


class Origin(StrEnum):
    """Where an event came from; the value is what the router's `messages.origin` stores."""

    WEBHOOK = "webhook"
    HISTORY = "history"
    GAP_REPAIR = "gap_repair"

    @classmethod
    def from_proto(cls, value: int) -> Origin:
        """The origin of an `events.v1.Origin` number; ValueError for any other."""
        for origin, number in _ORIGIN_NUMBERS.items():
            if number == value:
                return origin
        raise ValueError(f"not an origin: {value}")

    @property
    def proto(self) -> int:
        return _ORIGIN_NUMBERS[self]


_ORIGIN_NUMBERS = {
    Origin.WEBHOOK: events_pb2.ORIGIN_WEBHOOK,
    Origin.HISTORY: events_pb2.ORIGIN_HISTORY,
    Origin.GAP_REPAIR: events_pb2.ORIGIN_GAP_REPAIR,
}


# Column sizes of the router's tables (services/router/store): every value the gateway
# emits fits, and the router refuses none of them.
MAX_PAGE_ID = 128
MAX_USER_ID = 128  # PSID, IGSID, or a page-level item's own id
MAX_EVENT_ID = 512
# A mid is stored as is; an unsend marks "deleted" on it, so no prefix is added.
MAX_MID = 500
MAX_APP_ID = 64
MAX_KIND = 64
MAX_REACTION = 32
MAX_EMOJI = 64
MAX_VERB = 16
# A comment's author's display name (Facebook name, Instagram username), and a history
# marker's person's name (it fills the contact's name or username).
MAX_NAME = 256
# Graph's conversation id (t_… on Messenger, a base64 aWdf… on Instagram, about 100
# characters today); it travels in the marker's log entry only, bounded like an event id.
MAX_CONVERSATION_ID = MAX_EVENT_ID
# The comment verbs the router folds; any other is kept raw.
COMMENT_VERBS = frozenset({"add", "edited", "remove", "hide", "unhide"})
POST_REACTION_VERBS = frozenset({"add", "edit", "remove"})
# The most events one Ingest may carry; the gateway sends larger POSTs in several calls.
MAX_EVENTS_PER_CALL = 1000

# Kinds whose event means nothing without the person it concerns.
KINDS_NEEDING_PERSON = frozenset(
    {"message", "delivery", "read", "postback", "reaction", "edit", "history"}
)


def unstorable(event: events_pb2.Event) -> str | None:
    """Why the router cannot store `event` as its kind, or None when it can.

    The answer names the field, never its value. An event with such a reason is
    stored as `unsupported` (its raw item kept) by the router, and the gateway never
    emits one on purpose.
    """
    kind = event.WhichOneof("kind")
    if kind is None:
        return "kind: none set"
    if len(event.user_id) > MAX_USER_ID:
        return f"user_id: longer than {MAX_USER_ID}"
    if kind in KINDS_NEEDING_PERSON and not event.user_id.strip():
        return f"user_id: a {kind} needs the person it concerns"
    for name, value, limit in _bounded_fields(event, kind):
        if len(value) > limit:
            return f"{name}: longer than {limit}"
        if "\x00" in value:
            return f"{name}: holds a NUL character"
    if kind == "message" and "\x00" in event.message.text:
        return "message.text: holds a NUL character"
    if kind == "comment":
        c = event.comment
        if not c.comment_id or not c.post_id:
            return "comment: needs comment_id and post_id"
        if c.verb not in COMMENT_VERBS:
            return "comment.verb: not one the router folds"
        if "\x00" in c.text:
            return "comment.text: holds a NUL character"
    if kind == "post_reaction":
        r = event.post_reaction
        if not r.post_id or not r.user_id:
            return "post_reaction: needs post_id and user_id"
        if r.verb not in POST_REACTION_VERBS:
            return "post_reaction.verb: not one the router folds"
    if kind == "mention" and not event.mention.media_id:
        return "mention: needs media_id"
    if kind == "history" and event.history.messages < 0:
        return "history.messages: negative"
    return None


def _bounded_fields(event: events_pb2.Event, kind: str) -> list[tuple[str, str, int]]:
    """(field, value, limit) of every column-bound string of the event's kind."""
    if kind == "message":
        m = event.message
        return [
            ("message.mid", m.mid, MAX_MID),
            ("message.reply_to_mid", m.reply_to_mid, MAX_MID),
            ("message.app_id", m.app_id, MAX_APP_ID),
        ]
    if kind == "postback":
        return [("postback.mid", event.postback.mid, MAX_MID)]
    if kind == "reaction":
        r = event.reaction
        return [
            ("reaction.mid", r.mid, MAX_MID),
            ("reaction.action", r.action, MAX_REACTION),
            ("reaction.reaction", r.reaction, MAX_REACTION),
            ("reaction.emoji", r.emoji, MAX_EMOJI),
        ]
    if kind == "edit":
        return [("edit.mid", event.edit.mid, MAX_MID)]
    if kind == "delivery":
        return [(f"delivery.mids[{i}]", mid, MAX_MID) for i, mid in enumerate(event.delivery.mids)]
    if kind == "read":
        return [("read.mid", event.read.mid, MAX_MID)]
    if kind == "handover":
        h = event.handover
        return [
            ("handover.new_owner_app_id", h.new_owner_app_id, MAX_APP_ID),
            ("handover.previous_owner_app_id", h.previous_owner_app_id, MAX_APP_ID),
        ]
    if kind == "unsupported":
        return [("unsupported.kind", event.unsupported.kind, MAX_KIND)]
    if kind == "comment":
        c = event.comment
        return [
            ("comment.comment_id", c.comment_id, MAX_MID),
            ("comment.post_id", c.post_id, MAX_MID),
            ("comment.parent_id", c.parent_id, MAX_MID),
            ("comment.verb", c.verb, MAX_VERB),
            ("comment.author_id", c.author_id, MAX_USER_ID),
            ("comment.author_name", c.author_name, MAX_NAME),
            ("comment.field", c.field, MAX_KIND),
            ("comment.media_product_type", c.media_product_type, MAX_KIND),
            ("comment.ad_id", c.ad_id, MAX_MID),
        ]
    if kind == "post_reaction":
        r = event.post_reaction
        return [
            ("post_reaction.post_id", r.post_id, MAX_MID),
            ("post_reaction.comment_id", r.comment_id, MAX_MID),
            ("post_reaction.reaction_type", r.reaction_type, MAX_REACTION),
            ("post_reaction.verb", r.verb, MAX_VERB),
            ("post_reaction.user_id", r.user_id, MAX_USER_ID),
            ("post_reaction.user_name", r.user_name, MAX_NAME),
        ]
    if kind == "mention":
        m = event.mention
        return [
            ("mention.media_id", m.media_id, MAX_MID),
            ("mention.comment_id", m.comment_id, MAX_MID),
        ]
    if kind == "history":
        h = event.history
        return [
            ("history.conversation_id", h.conversation_id, MAX_CONVERSATION_ID),
            ("history.user_name", h.user_name, MAX_NAME),
        ]
    return []


def demoted(event: events_pb2.Event) -> events_pb2.Event:
    """The same item as an `unsupported` event of kind `<kind>:invalid`: its id, page,
    time, origin and raw JSON kept, the kind's fields dropped; an over-long person id is
    dropped too (the item is then the page's, not a conversation's)."""
    kind = event.WhichOneof("kind") or "unknown"
    out = events_pb2.Event(
        id=event.id,
        platform=event.platform,
        page_id=event.page_id,
        user_id=event.user_id if len(event.user_id) <= MAX_USER_ID else "",
        direction=event.direction,
        timestamp_ms=event.timestamp_ms,
        standby=event.standby,
        raw_json=event.raw_json,
        received_at_ms=event.received_at_ms,
        origin=event.origin,
        unsupported=events_pb2.UnsupportedEvent(kind=f"{kind}:invalid"[:MAX_KIND]),
    )
    return out
