"""Meta webhook envelopes → `events.v1` events: pure functions, no web or gRPC imports.

Every item of every `entry[].messaging[]`, `entry[].standby[]` and
`entry[].changes[]` becomes one Event, of the platform of the path the body
arrived on. Meta's payloads vary (ids as numbers or strings, seconds or
milliseconds, float timestamps, missing senders, the dashboard's test body), so
nothing here trusts a type: a value of the wrong type reads as absent, and an
item that cannot be understood travels as `unsupported` with its raw JSON. A
`changes[]` item is a comment, a post reaction or a mention when it is one (Page
`feed` comments and reactions, Instagram `comments`, `live_comments` and `mentions`),
and any other is `unsupported` with its field as kind. What an event may hold is the
event contract's (pagewire/contract.py): an event that breaks it is sent as the
contract's demoted `unsupported` event instead, its raw item kept. The gateway
normalizes what it receives; the router normalizes the raw items of its log again
after an upgrade (`renormalize`), so an item keeps its id across versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pagewire import contract
from pagewire.contract import (
    KINDS_NEEDING_PERSON,
    MAX_APP_ID,
    MAX_EVENT_ID,
    MAX_KIND,
    MAX_NAME,
    MAX_PAGE_ID,
    MAX_USER_ID,
    Platform,
)
from pagewire.kit.timeutil import now_ms
from pagewire.proto import events_pb2

# Webhook `object` → platform. Anything else (user, permissions, whatsapp...) is not ours.
PLATFORMS: dict[str, Platform] = {"page": Platform.FACEBOOK, "instagram": Platform.INSTAGRAM}
# Platform → the only `object` its webhook path accepts.
OBJECTS: dict[Platform, str] = {platform: obj for obj, platform in PLATFORMS.items()}
# The lists of an entry whose elements are items: what PAGEWIRE_GATEWAY_MAX_ITEMS counts.
ITEM_LISTS = ("messaging", "standby", "changes")

# Below this a timestamp is in seconds: 10**11 ms is 1973, 10**11 s is the year 5138.
_SECONDS_BELOW = 10**11
_INT64_MAX = 2**63 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
# Meta's envelopes nest about eight levels; far deeper input is hostile, and re-encoding it
# (raw_json, the id digest) could hit Python's recursion limit mid-request.
MAX_DEPTH = 64

# Keys every item carries; they say who and when, never what happened.
_COMMON_KEYS = frozenset({"sender", "recipient", "timestamp"})
# When an item has several content keys, the first of these names its kind (a postback
# carrying a referral is a postback); otherwise the item's first other key does.
_KIND_PRIORITY = (
    "message",
    "message_edit",
    "delivery",
    "read",
    "reaction",
    "postback",
    "referral",
    "optin",
    "pass_thread_control",
    "take_thread_control",
    "request_thread_control",
    "app_roles",
    "policy_enforcement",
    "policy-enforcement",
    "account_linking",
)
# Modifiers that ride along with a real event (a checkbox-plugin message carries one).
_MODIFIER_KEYS = frozenset({"prior_message"})
_HANDOVER_KEYS = frozenset(
    {"pass_thread_control", "take_thread_control", "request_thread_control", "app_roles"}
)
_POLICY_KEYS = frozenset({"policy_enforcement", "policy-enforcement"})
_STICKER_BEARING = frozenset({"sticker", "image"})


class MalformedEnvelope(ValueError):
    """Not a webhook envelope: not JSON, not an object, a top-level key twice, `entry` not a
    list, or nested absurdly."""


class TooManyItems(ValueError):
    """More items than one POST may carry (a 413), found before anything walks them."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} items (entries, messaging, standby and changes)")
        self.limit = limit


def parse_envelope(body: bytes, *, max_items: int | None = None) -> dict[str, Any]:
    """Parses a webhook body; raises MalformedEnvelope (a 400) rather than guessing.

    NaN and Infinity are refused: they are not JSON, and nothing downstream could
    store them. Integers keep full precision (ids above 2**53 stay exact). A
    top-level key given twice is refused: the standard decoder silently keeps the
    last `object`, another parser may keep the first. With `max_items`, more items
    than that raise TooManyItems right after decoding, before the depth walk and
    normalization, whose cost grows with them (a signed 1 MiB body of `{}` items is
    340,000 events and seconds of CPU).
    """
    try:
        data = _decode(body)
    except MalformedEnvelope:
        raise
    except (ValueError, RecursionError):
        raise MalformedEnvelope("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedEnvelope("body is not a JSON object")
    entries = data.get("entry")
    if not isinstance(entries, list):
        raise MalformedEnvelope("entry is not a list")
    if max_items is not None and _more_items_than(entries, max_items):
        raise TooManyItems(max_items)
    if _too_deep(data, MAX_DEPTH):
        raise MalformedEnvelope(f"body is nested deeper than {MAX_DEPTH} levels")
    return data


def platform_of(envelope: Mapping[str, Any]) -> Platform | None:
    """The platform the body's `object` names: FACEBOOK for `page`, INSTAGRAM for
    `instagram`, else None. The gateway compares it with its path's platform; it never
    decides the platform of the events."""
    obj = envelope.get("object")
    return PLATFORMS.get(obj) if isinstance(obj, str) else None


Demoted = Callable[[events_pb2.Event, str], None]
"""Told of each event that broke the contract (the event as built, the contract's reason)
before its demoted stand-in replaces it: the gateway counts them."""


def normalize_envelope(
    envelope: Mapping[str, Any],
    *,
    platform: Platform | int | None = None,
    received_at_ms: int | None = None,
    on_demoted: Demoted | None = None,
) -> list[events_pb2.Event]:
    """Every messaging, standby and changes item of every entry, as events of `platform`
    in Meta's order; each one storable as it is (`contract.unstorable(e) is None`).

    The gateway passes the platform of the path the body arrived on, whose secret
    signed it (a body whose `object` names the other platform was refused before).
    Without it the platform is the one `object` names, for tools and tests that replay
    stored bodies with no path; a body naming none gives no events.

    Entries without a usable id are skipped: without a page nothing can be routed,
    and Meta's dashboard test body (`"message": "TEST_MESSAGE"`, no ids) is one.
    An item whose event breaks the contract (a mid longer than any real one) is sent
    as `contract.demoted(event)`, its raw item kept, and `on_demoted` is told.
    """
    if platform is None:
        platform = platform_of(envelope)
    elif not isinstance(platform, Platform):
        platform = Platform.from_proto(platform)
    entries = envelope.get("entry")
    if platform is None or not isinstance(entries, list):
        return []
    number = platform.proto
    received = now_ms() if received_at_ms is None else received_at_ms
    events: list[events_pb2.Event] = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        page_id = _bounded(id_str(entry.get("id")), MAX_PAGE_ID)
        if not page_id:
            continue
        entry_time_ms = to_ms(entry.get("time"))
        for key in ITEM_LISTS:
            items = entry.get(key)
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, Mapping):
                    continue  # not an item at all: no sender, no kind, nothing to keep
                if key == "changes":
                    event = normalize_change(
                        item,
                        platform=number,
                        page_id=page_id,
                        entry_time_ms=entry_time_ms,
                        received_at_ms=received,
                    )
                else:
                    event = normalize_item(
                        item,
                        platform=number,
                        page_id=page_id,
                        standby=key == "standby",
                        entry_time_ms=entry_time_ms,
                        received_at_ms=received,
                    )
                events.append(_storable(event, on_demoted))
    return events


def _storable(event: events_pb2.Event, on_demoted: Demoted | None) -> events_pb2.Event:
    """The event, or the contract's `unsupported` stand-in when the router could not
    store it as its kind (it would store the stand-in itself; sending it says so here)."""
    reason = contract.unstorable(event)
    if reason is None:
        return event
    if on_demoted is not None:
        on_demoted(event, reason)
    return contract.demoted(event)


def normalize_item(
    item: Mapping[str, Any],
    *,
    platform: int,
    page_id: str,
    standby: bool = False,
    entry_time_ms: int | None = None,
    received_at_ms: int,
) -> events_pb2.Event:
    """One messaging item → one Event; never raises on odd shapes.

    Mids are kept as they came: one longer than the contract allows makes the event
    unstorable, and normalize_envelope sends it demoted (raw item kept) rather than
    pretend the item concerns no message.
    """
    kind = item_kind(item)
    body = item.get(kind)
    event = events_pb2.Event(
        platform=platform,  # type: ignore[arg-type]
        page_id=page_id,
        standby=standby,
        raw_json=raw_json(item),
        received_at_ms=received_at_ms,
    )
    sender = _party_id(item, "sender")
    recipient = _party_id(item, "recipient")
    watermark_ms: int | None = None

    if kind == "message" and isinstance(body, Mapping):
        _fill_message(event.message, body)
        if event.message.is_deleted and event.message.mid:
            # An unsend carries the mid of the message it removes; sharing that id would
            # make it a duplicate of the original and the removal would be dropped.
            event.id = "deleted:" + event.message.mid
        else:
            event.id = event.message.mid or event_digest("message", platform, page_id, item)
    elif kind == "delivery" and isinstance(body, Mapping):
        event.delivery.mids.extend(m for m in map(id_str, _list(body.get("mids"))) if m)
        watermark_ms = to_ms(body.get("watermark"))
        event.delivery.watermark_ms = watermark_ms or 0
        event.id = event_digest("delivery", platform, page_id, item)
    elif kind == "read" and isinstance(body, Mapping):
        watermark_ms = to_ms(body.get("watermark"))
        event.read.watermark_ms = watermark_ms or 0
        event.read.mid = id_str(body.get("mid"))
        event.id = event_digest("read", platform, page_id, item)
    elif kind == "postback" and isinstance(body, Mapping):
        postback = event.postback
        postback.title = _text(body.get("title"))
        postback.payload = _text(body.get("payload"))
        postback.mid = id_str(body.get("mid"))
        postback.referral_json = _json_or_empty(body.get("referral"))
        event.id = postback.mid or event_digest("postback", platform, page_id, item)
    elif kind == "reaction" and isinstance(body, Mapping):
        reaction = event.reaction
        reaction.mid = id_str(body.get("mid"))
        reaction.action = _text(body.get("action")) or "react"
        reaction.reaction = _text(body.get("reaction"))
        reaction.emoji = _text(body.get("emoji"))
        event.id = event_digest("reaction", platform, page_id, item)
    elif kind == "message_edit" and isinstance(body, Mapping):
        event.edit.mid = id_str(body.get("mid"))
        event.edit.text = _text(body.get("text"))
        event.edit.num_edit = _small_int(body.get("num_edit"))
        event.id = event_digest("edit", platform, page_id, item)
    elif kind == "referral" and isinstance(body, Mapping):
        _fill_referral(event.referral, body)
        event.id = event_digest("referral", platform, page_id, item)
    elif kind == "optin" and isinstance(body, Mapping):
        optin = event.optin
        optin.type = _text(body.get("type"))
        optin.payload = _text(body.get("payload"))
        optin.ref = _text(body.get("ref"))
        optin.user_ref = id_str(body.get("user_ref"))
        optin.title = _text(body.get("title"))
        optin.notification_messages_status = _text(body.get("notification_messages_status"))
        event.id = event_digest("optin", platform, page_id, item)
    elif kind in _HANDOVER_KEYS and isinstance(body, Mapping):
        handover = event.handover
        handover.action = kind
        # An app id no app could have reads as absent: the handover still happened.
        handover.previous_owner_app_id = _bounded(
            id_str(body.get("previous_owner_app_id")), MAX_APP_ID
        )
        handover.new_owner_app_id = _bounded(id_str(body.get("new_owner_app_id")), MAX_APP_ID)
        handover.requested_owner_app_id = id_str(body.get("requested_owner_app_id"))
        handover.metadata = _text(body.get("metadata"))
        event.id = event_digest("handover", platform, page_id, item)
    elif kind in _POLICY_KEYS and isinstance(body, Mapping):
        event.policy_enforcement.action = _text(body.get("action"))
        event.policy_enforcement.reason = _text(body.get("reason"))
        event.id = event_digest("policy_enforcement", platform, page_id, item)
    else:
        event.unsupported.kind = kind
        event.id = event_digest(kind, platform, page_id, item)

    if event.HasField("message") and event.message.is_echo:
        # An echo is the Page writing to the person: the person is the recipient.
        event.direction = events_pb2.OUTBOUND
        event.user_id = recipient
    else:
        event.direction = events_pb2.INBOUND
        # Some senders put the Page as sender and the person as recipient (older
        # delivery/read/handover shapes); the conversation is still the person's.
        event.user_id = recipient if sender and sender == page_id else sender

    # Meta omits the timestamp on some deliveries; the watermark, then the entry's time,
    # then the moment of receipt are the next best order keys.
    item_ms = to_ms(item.get("timestamp"))
    event.timestamp_ms = item_ms or watermark_ms or entry_time_ms or received_at_ms
    if len(event.id) > MAX_EVENT_ID:
        # Only a mid can be this long (digests are short); an id-less item's digest
        # keeps redeliveries together all the same.
        event.id = event_digest(kind, platform, page_id, item)
    which = event.WhichOneof("kind")
    if which in KINDS_NEEDING_PERSON and not event.user_id:
        # Without a person there is no conversation to put it in: keep it raw against the
        # page rather than have the router refuse the whole POST (Meta would redeliver it
        # forever).
        event.ClearField(which)
        event.unsupported.kind = which
    return event


def normalize_change(
    change: Mapping[str, Any],
    *,
    platform: int,
    page_id: str,
    entry_time_ms: int | None = None,
    received_at_ms: int,
) -> events_pb2.Event:
    """One `changes[]` item (`{"field": ..., "value": {...}}`) → one Event of the page.

    Page `feed` comments become `comment` events and its reactions `post_reaction`
    events; Instagram `comments` and `live_comments` become `comment` events and
    `mentions` `mention` events (each field on its own platform only). Any other item —
    other feed items (posts, statuses, photos, shares...), other fields, an item lacking
    what its kind needs (a comment without its id or post, a verb the router does not
    fold: whatever `contract.unstorable` refuses) — is `unsupported` with the field as
    kind.

    The event is the page's, not a conversation's (user_id is empty): a commenter is not
    someone the page messages, and comment threads are their own model; the author being
    the page itself makes it outbound. The id is a digest of the field and the item, as
    for id-less messaging items and whatever the item is modelled as: a redelivery gets
    the same id, any other item another, and an item kept by an older version keeps its
    id when normalized again. The raw JSON is the whole change item.

    Time: a comment, reaction or mention is ordered by when it happened, which is the
    entry's `time` (Meta's time of the notification: an edit is not ordered by the
    comment's creation), else `value.created_time`, else the moment of receipt. An
    `unsupported` item keeps the older order: `created_time` (epoch seconds, or an ISO
    string in Graph's style), then the entry's time.
    """
    field = _text(change.get("field"))[:MAX_KIND] or "unknown"
    raw_value = change.get("value")
    value: Mapping[str, Any] = raw_value if isinstance(raw_value, Mapping) else {}
    author = _party_id(value, "from")
    event = events_pb2.Event(
        id=event_digest(field, platform, page_id, change),
        platform=platform,  # type: ignore[arg-type]
        page_id=page_id,
        user_id="",
        direction=events_pb2.OUTBOUND if author == page_id else events_pb2.INBOUND,
        raw_json=raw_json(change),
        received_at_ms=received_at_ms,
    )
    created_ms = _created_ms(value.get("created_time"))
    kind = _fill_change(event, platform, field, value, created_ms)
    if kind is not None and contract.unstorable(event) is None:
        event.timestamp_ms = entry_time_ms or created_ms or received_at_ms
        return event
    if kind is not None:
        event.ClearField(kind)
    event.unsupported.kind = field
    event.timestamp_ms = created_ms or entry_time_ms or received_at_ms
    return event


# Meta spells a comment's edit `edited` and, in some payloads, `edit`; a reaction's change
# `edit` (and, by the same token, `edited`). The contract has one word for each.
_COMMENT_VERBS = {"edit": "edited"}
_REACTION_VERBS = {"edited": "edit"}
_INSTAGRAM_COMMENT_FIELDS = frozenset({"comments", "live_comments"})


def _fill_change(
    event: events_pb2.Event,
    platform: int,
    field: str,
    value: Mapping[str, Any],
    created_ms: int | None,
) -> str | None:
    """Fills the kind a change item is (`comment`, `post_reaction` or `mention`) and names
    it; None for an item Pagewire does not model. Whether the fields are enough is the
    contract's to say (`contract.unstorable`), not this function's."""
    if platform == events_pb2.FACEBOOK and field == "feed":
        item = value.get("item")
        if item == "comment":
            comment = event.comment
            comment.comment_id = id_str(value.get("comment_id"))
            comment.post_id = id_str(value.get("post_id"))
            # Meta gives a top-level comment its post as parent: only a reply has one.
            parent = id_str(value.get("parent_id"))
            comment.parent_id = "" if parent == comment.post_id else parent
            verb = _text(value.get("verb"))
            comment.verb = _COMMENT_VERBS.get(verb, verb)
            comment.text = _text(value.get("message"))
            comment.author_id, comment.author_name = _author(value, "name")
            comment.created_time_ms = created_ms or 0
            comment.field = field
            comment.attachment_url = _first_text(value.get("photo"), value.get("video"))
            return "comment"
        if item == "reaction":
            reaction = event.post_reaction
            reaction.post_id = id_str(value.get("post_id"))
            reaction.comment_id = id_str(value.get("comment_id"))
            reaction.reaction_type = _text(value.get("reaction_type"))
            verb = _text(value.get("verb"))
            reaction.verb = _REACTION_VERBS.get(verb, verb)
            reaction.user_id, reaction.user_name = _author(value, "name")
            return "post_reaction"
        return None
    if platform == events_pb2.INSTAGRAM and field in _INSTAGRAM_COMMENT_FIELDS:
        raw_media = value.get("media")
        media: Mapping[str, Any] = raw_media if isinstance(raw_media, Mapping) else {}
        comment = event.comment
        comment.comment_id = id_str(value.get("id"))
        comment.post_id = id_str(media.get("id"))
        comment.parent_id = id_str(value.get("parent_id"))
        comment.verb = "add"  # Instagram notifies new comments only
        comment.text = _text(value.get("text"))
        comment.author_id, comment.author_name = _author(value, "username")
        comment.field = field
        comment.media_product_type = _text(media.get("media_product_type"))
        comment.ad_id = id_str(media.get("ad_id"))
        comment.ad_title = _text(media.get("ad_title"))
        return "comment"
    if platform == events_pb2.INSTAGRAM and field == "mentions":
        event.mention.media_id = id_str(value.get("media_id"))
        event.mention.comment_id = id_str(value.get("comment_id"))
        return "mention"
    return None


def _author(value: Mapping[str, Any], name_key: str) -> tuple[str, str]:
    """`value.from`'s id and display name (`name` on Facebook, `username` on Instagram).
    An id no real one could be reads as absent; a name too long for its column is cut,
    as a name says who, never which."""
    party = value.get("from")
    name = _text(party.get(name_key)) if isinstance(party, Mapping) else ""
    return _party_id(value, "from"), name[:MAX_NAME]


def renormalize(stored: events_pb2.Event) -> events_pb2.Event:
    """A kept event normalized again from its raw item by this code, its id unchanged: what
    the router runs on its log's items after an upgrade (a feed comment kept as
    `unsupported` becomes a `comment`).

    The raw item is a `messaging[]`/`standby[]` item or a `changes[]` item; which one is
    recognised by the id it gives back, as every id is a function of the item alone. The
    entry's time is not in the raw item: the stored time stands in for it. An item that
    gives another id under both readings (it cannot, short of a bug) is returned as it
    was stored, so nothing kept ever changes id.
    """
    try:
        item = json.loads(stored.raw_json) if stored.raw_json else None
    except ValueError:
        item = None
    if not isinstance(item, Mapping):
        return stored
    entry_time_ms = stored.timestamp_ms or None
    received = stored.received_at_ms or stored.timestamp_ms

    def as_change() -> events_pb2.Event:
        return normalize_change(
            item,
            platform=stored.platform,
            page_id=stored.page_id,
            entry_time_ms=entry_time_ms,
            received_at_ms=received,
        )

    def as_item() -> events_pb2.Event:
        return normalize_item(
            item,
            platform=stored.platform,
            page_id=stored.page_id,
            standby=stored.standby,
            entry_time_ms=entry_time_ms,
            received_at_ms=received,
        )

    readings = (as_change, as_item) if "field" in item or "value" in item else (as_item, as_change)
    for read in readings:
        event = read()
        if event.id == stored.id:
            return _storable(event, None)
    return stored


def _created_ms(value: object) -> int | None:
    """Graph's `created_time`: epoch seconds (a number or its digits) or an ISO 8601
    string (`2026-05-07T14:10:45+0000`; without an offset it is UTC), as epoch ms."""
    ms = to_ms(value)
    if ms is not None or not isinstance(value, str):
        return ms
    try:
        moment = datetime.fromisoformat(value.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        return None
    return ms if 0 < ms <= _INT64_MAX else None


def graph_time_ms(value: object) -> int | None:
    """Graph's `created_time` / `updated_time` as epoch ms (None when unusable)."""
    return _created_ms(value)


def text_of(value: object) -> str:
    """A string as the router stores text (NUL and lone surrogates replaced), '' otherwise."""
    return _text(value)


def item_kind(item: Mapping[str, Any]) -> str:
    """The key that names what happened (Meta puts no type field in the body)."""
    for key in _KIND_PRIORITY:
        if key in item:
            return key
    for key in item:
        if key not in _COMMON_KEYS and key not in _MODIFIER_KEYS:
            return _clean(str(key))[:MAX_KIND] or "unknown"
    for key in item:
        if key in _MODIFIER_KEYS:
            return key
    return "unknown"


def id_str(value: object) -> str:
    """An id as a string: strings as they are, integers in decimal, anything else ''.

    Meta documents ids as strings but sends some (app_id, sticker_id) as numbers,
    and other projects' payloads use numbers for every id.
    """
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else ""
    if isinstance(value, str):
        return _clean(value)
    return ""


def to_ms(value: object) -> int | None:
    """Meta's time as epoch milliseconds, or None when absent or unusable.

    Floats are accepted (some payloads write `1492414608999.0`); values below 10**11
    are seconds, which Meta's lead-ads and generic Graph samples use.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value) if "." in value else int(value)
        except ValueError:
            return None
    if isinstance(value, int):
        ms = value * 1000 if value < _SECONDS_BELOW else value
    elif isinstance(value, float) and math.isfinite(value):
        if not 0 < value <= _INT64_MAX:
            return None  # and -1e305 * 1000 would be -inf, which round() refuses
        ms = round(value * 1000) if value < _SECONDS_BELOW else int(value)
    else:
        return None
    return ms if 0 < ms <= _INT64_MAX else None


def raw_json(item: object) -> str:
    """The item as compact JSON with readable (unescaped) non-ASCII text."""
    text = json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a half emoji) cannot be UTF-8; escaped JSON keeps it exactly.
        text = json.dumps(item, ensure_ascii=True, separators=(",", ":"), default=str)
    return text


def event_digest(kind: str, platform: int, page_id: str, item: object) -> str:
    """`<kind>:<sha256 prefix>` over the platform, the page and the item itself.

    Only content goes in (never entry.time or the time of receipt), so Meta's
    redelivery of the same item gets the same id and any other item another.
    """
    canonical = json.dumps(
        {"platform": platform, "page_id": page_id, "item": item},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        default=str,
    )
    return f"{kind}:{hashlib.sha256(canonical.encode('ascii')).hexdigest()[:40]}"


def _fill_message(target: events_pb2.MessageEvent, message: Mapping[str, Any]) -> None:
    target.mid = id_str(message.get("mid"))
    target.text = _text(message.get("text"))
    target.is_echo = _flag(message.get("is_echo"))
    # An app id no app could have reads as absent: the message is still the Page's.
    target.app_id = _bounded(id_str(message.get("app_id")), MAX_APP_ID)
    target.metadata = _text(message.get("metadata"))
    target.is_deleted = _flag(message.get("is_deleted"))
    target.is_unsupported = _flag(message.get("is_unsupported"))
    quick_reply = message.get("quick_reply")
    if isinstance(quick_reply, Mapping):
        target.quick_reply_payload = _text(quick_reply.get("payload"))
    reply_to = message.get("reply_to")
    if isinstance(reply_to, Mapping):
        target.reply_to_mid = id_str(reply_to.get("mid"))
        story = reply_to.get("story")
        if isinstance(story, Mapping):
            target.reply_to_story_url = _text(story.get("url"))
            target.reply_to_story_id = id_str(story.get("id"))
    target.referral_json = _json_or_empty(message.get("referral"))
    # Older payloads put the sticker id on the message, beside an image attachment.
    message_sticker = id_str(message.get("sticker_id"))
    attachments = [
        _attachment(attachment, message_sticker)
        for attachment in _list(message.get("attachments"))
        if isinstance(attachment, Mapping)
    ]
    # During Meta's sticker transition a sticker arrives twice, as `sticker` and as an
    # `image` carrying the same sticker_id; it is one sticker.
    stickers = {a.sticker_id for a in attachments if a.type == "sticker" and a.sticker_id}
    target.attachments.extend(
        a for a in attachments if not (a.type == "image" and a.sticker_id in stickers)
    )


def _attachment(attachment: Mapping[str, Any], message_sticker: str) -> events_pb2.Attachment:
    raw_payload = attachment.get("payload")
    payload: Mapping[str, Any] = raw_payload if isinstance(raw_payload, Mapping) else {}
    kind = _text(attachment.get("type"))
    sticker = id_str(payload.get("sticker_id"))
    if not sticker and kind in _STICKER_BEARING:
        sticker = message_sticker
    return events_pb2.Attachment(
        type=kind,
        # Legacy fallbacks have `payload: null` with top-level title and `url` or `URL`.
        url=_first_text(payload.get("url"), attachment.get("url"), attachment.get("URL")),
        title=_first_text(payload.get("title"), attachment.get("title")),
        sticker_id=sticker,
        payload_json="" if raw_payload is None else raw_json(raw_payload),
    )


def _fill_referral(target: events_pb2.ReferralEvent, referral: Mapping[str, Any]) -> None:
    target.ref = _text(referral.get("ref"))
    target.source = _text(referral.get("source"))
    target.type = _text(referral.get("type"))
    target.ad_id = id_str(referral.get("ad_id"))
    target.referer_uri = _text(referral.get("referer_uri"))


def _json_or_empty(value: object) -> str:
    return raw_json(value) if isinstance(value, Mapping) else ""


def _small_int(value: object) -> int:
    """An int32 count (num_edit); anything else reads as 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return 0
    return max(0, min(int(value), 2**31 - 1))


def _party_id(item: Mapping[str, Any], key: str) -> str:
    party = item.get(key)
    return _bounded(id_str(party.get("id")), MAX_USER_ID) if isinstance(party, Mapping) else ""


def _bounded(value: str, limit: int) -> str:
    """A page, person or app id no real Meta id could be (longer than the contract's
    column) reads as absent: the item is then kept raw against the page."""
    return value if len(value) <= limit else ""


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return False


def _text(value: object) -> str:
    return _clean(value) if isinstance(value, str) else ""


def _first_text(*values: object) -> str:
    for value in values:
        if isinstance(value, str) and value:
            return _clean(value)
    return ""


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _clean(text: str) -> str:
    """Protobuf strings must be valid UTF-8 and PostgreSQL text holds no NUL: a lone
    surrogate and a NUL become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_WHITESPACE = json.decoder.WHITESPACE.match


def _decode(body: bytes) -> object:
    """`json.loads(body)`, except that a top-level key given twice raises MalformedEnvelope.

    A pairs hook on `json.loads` would run in Python for every object of the body;
    here only the top-level object goes through the library's own object parser
    (`json.decoder.JSONObject`) with a hook, and every value in it is still decoded
    by the C scanner, so the normal path costs the same.
    """
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    start = _WHITESPACE(text, 0).end()
    if not text.startswith("{", start):
        return _DECODER.decode(text)
    data, end = json.decoder.JSONObject(  # type: ignore[attr-defined]
        (text, start + 1), _DECODER.strict, _DECODER.scan_once, None, _unique_keys, {}
    )
    if _WHITESPACE(text, end).end() != len(text):
        raise ValueError("extra data after the top-level object")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedEnvelope(f"top-level key {json.dumps(key[:64])} appears twice")
            seen.add(key)
    return data


def _more_items_than(entries: list[Any], limit: int) -> bool:
    """True when the entries and the items of their messaging, standby and changes lists
    number more than `limit`; looks at two levels only, never inside an item."""
    count = len(entries)
    if count > limit:
        return True
    for entry in entries:
        if isinstance(entry, dict):
            for key in ITEM_LISTS:
                items = entry.get(key)
                if isinstance(items, list):
                    count += len(items)
            if count > limit:
                return True
    return False


def _too_deep(value: object, limit: int) -> bool:
    """True when values nest more than `limit` levels (walked level by level, without
    recursion; `extend` copies each level's children in C, which keeps the walk of a 1 MiB
    body in tens of milliseconds)."""
    level: list[object] = [value]
    for _ in range(limit - 1):
        below: list[object] = []
        for node in level:
            if isinstance(node, dict):
                below.extend(node.values())
            elif isinstance(node, list):
                below.extend(node)
        if not below:
            return False
        level = below
    # `level` holds the values at depth `limit`: anything inside one of them is too deep.
    return any(node for node in level if isinstance(node, dict | list))
