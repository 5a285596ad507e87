"""`changes[]` items as comment, post reaction and mention events: every fixture of
tests/fixtures/comments, the ids kept from before comments were modelled, the order of
edits, what stays raw, and normalizing kept items again."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from pagewire import contract
from pagewire.normalize import (
    event_digest,
    normalize_change,
    normalize_envelope,
    parse_envelope,
    renormalize,
    to_ms,
)
from pagewire.proto import events_pb2
from tests.conftest import COMMENT_FIXTURES

RECEIVED = 1_800_000_000_123
PAGE = "109384756201938"
IG_ACCOUNT = "17841405822304914"
POST = f"{PAGE}_834019275610482"
C1 = "834019275610482_1290384756102938"
C2 = "834019275610482_1290384756102977"
C3 = "834019275610482_1290384756103021"
ANA, ANA_NAME = "6183920457712836", "Ana Morales"
JULIAN, JULIAN_NAME = "7294015836620194", "Julián Restrepo"
CREATED_MS = 1778163045 * 1000
FB = events_pb2.FACEBOOK
IG = events_pb2.INSTAGRAM
INBOUND = events_pb2.INBOUND
OUTBOUND = events_pb2.OUTBOUND
Comment = events_pb2.CommentEvent
PostReaction = events_pb2.PostReactionEvent
Mention = events_pb2.MentionEvent
Unsupported = events_pb2.UnsupportedEvent


def _feed_comment(verb: str, text: str = "¿Lo tienen en talla M? 🙂", **fields: Any) -> Comment:
    values: dict[str, Any] = {
        "comment_id": C1,
        "post_id": POST,
        "verb": verb,
        "text": text,
        "author_id": ANA,
        "author_name": ANA_NAME,
        "created_time_ms": CREATED_MS,
        "field": "feed",
    }
    return Comment(**{**values, **fields})


def _ig_comment(**fields: Any) -> Comment:
    values: dict[str, Any] = {"verb": "add", "field": "comments", "author_id": "6742019384756123"}
    return Comment(**{**values, **fields})


# File → (kind body, event timestamp in ms, direction) of each event, in Meta's order. The
# timestamp of a comment, reaction or mention is the entry's time (seconds or ms).
EXPECTED: dict[str, list[tuple[Any, int, int]]] = {
    "feed_comment_add": [(_feed_comment("add"), CREATED_MS + 2_000, INBOUND)],
    "feed_comment_edited": [
        (_feed_comment("edited", "¿Lo tienen en talla M o L? 🙂"), CREATED_MS + 300_000, INBOUND)
    ],
    "feed_comment_edit": [
        (_feed_comment("edited", "¿Y en talla L?"), CREATED_MS + 420_000, INBOUND)
    ],
    "feed_comment_remove": [(_feed_comment("remove", ""), CREATED_MS + 900_000, INBOUND)],
    "feed_comment_hide": [(_feed_comment("hide"), CREATED_MS + 600_000, INBOUND)],
    "feed_comment_unhide": [(_feed_comment("unhide"), CREATED_MS + 660_000, INBOUND)],
    "feed_comment_by_page": [
        (
            _feed_comment(
                "add",
                "¡Hola Ana! Sí, te escribimos por Messenger.",
                comment_id=C2,
                parent_id=C1,
                author_id=PAGE,
                author_name="Tienda Aurora",
                created_time_ms=CREATED_MS + 118_000,
            ),
            CREATED_MS + 120_000,
            OUTBOUND,
        )
    ],
    "feed_comment_reply_photo": [
        (
            _feed_comment(
                "add",
                "Yo también la quiero así",
                comment_id=C3,
                parent_id=C2,
                author_id=JULIAN,
                author_name=JULIAN_NAME,
                created_time_ms=CREATED_MS + 237_000,
                attachment_url="https://scontent.xx.fbcdn.net/v/t39.30808-6/449318274_1290384756103021_n.jpg",
            ),
            CREATED_MS + 240_000,
            INBOUND,
        )
    ],
    "feed_reaction_post_add": [
        (
            PostReaction(
                post_id=POST,
                reaction_type="love",
                verb="add",
                user_id=JULIAN,
                user_name=JULIAN_NAME,
            ),
            CREATED_MS + 30_000,
            INBOUND,
        )
    ],
    "feed_reaction_post_remove": [
        (
            PostReaction(
                post_id=POST,
                reaction_type="love",
                verb="remove",
                user_id=JULIAN,
                user_name=JULIAN_NAME,
            ),
            CREATED_MS + 90_000,
            INBOUND,
        )
    ],
    "feed_reaction_comment_add": [
        (
            PostReaction(
                post_id=POST,
                comment_id=C2,
                reaction_type="like",
                verb="add",
                user_id=ANA,
                user_name=ANA_NAME,
            ),
            CREATED_MS + 150_000,
            INBOUND,
        )
    ],
    "feed_reaction_comment_remove": [
        (
            PostReaction(
                post_id=POST,
                comment_id=C2,
                reaction_type="like",
                verb="remove",
                user_id=ANA,
                user_name=ANA_NAME,
            ),
            CREATED_MS + 180_000,
            INBOUND,
        )
    ],
    # A status the Page posted stays raw, ordered by its creation as before.
    "feed_status_add": [(Unsupported(kind="feed"), CREATED_MS - 3_601_000, OUTBOUND)],
    "instagram_comment": [
        (
            _ig_comment(
                comment_id="17865799348089039",
                post_id="18034856291047382",
                text="Love this colour 😍",
                author_name="ana.m",
                media_product_type="FEED",
            ),
            1778163645734,
            INBOUND,
        )
    ],
    "instagram_comment_on_ad": [
        (
            _ig_comment(
                comment_id="17865799348089102",
                post_id="18034856291047400",
                text="Do you ship to Bogotá?",
                author_id="6742019384756199",
                author_name="camilo.tx",
                media_product_type="AD",
                ad_id="120208541937460123",
                ad_title="Spring sale — linen shirts",
            ),
            1778163700_000,
            INBOUND,
        )
    ],
    "instagram_reply_to_reply": [
        (
            _ig_comment(
                comment_id="17865799348089177",
                post_id="18034856291047511",
                parent_id="17865799348089140",
                text="@tienda.aurora thanks, ordered!",
                author_name="ana.m",
                media_product_type="REELS",
            ),
            1778163760_000,
            INBOUND,
        )
    ],
    "instagram_live_comment": [
        (
            _ig_comment(
                comment_id="17865799348089250",
                post_id="18051234567890123",
                text="hello from the live 👋",
                author_name="ana.m",
                field="live_comments",
                media_product_type="LIVE",
            ),
            1778164000_000,
            INBOUND,
        )
    ],
    "instagram_mention": [
        (
            Mention(media_id="17918195224117851", comment_id="17894227972186120"),
            1778164200_000,
            INBOUND,
        )
    ],
    "instagram_mention_caption": [(Mention(media_id="17918195224117899"), 1778164260_000, INBOUND)],
    "instagram_unknown_field": [(Unsupported(kind="story_insights"), 1778164300_000, INBOUND)],
    "mixed_messaging_and_changes": [
        (
            events_pb2.MessageEvent(
                mid="m_Kp3vQ0x8cW1mZbqR7Ty2uNfLs9HdJe4AoGiVkXwYz6BnCtMrP5SlUhEaDgFjIqOw",
                text="Hola, les escribí en la publicación",
            ),
            1778163045000,
            INBOUND,
        ),
        (_feed_comment("add"), 1778163045612, INBOUND),
        (
            PostReaction(
                post_id=POST,
                reaction_type="love",
                verb="add",
                user_id=JULIAN,
                user_name=JULIAN_NAME,
            ),
            1778163045612,
            INBOUND,
        ),
    ],
}

# Ids the normalizer gave these items before comments were modelled (every changes[] item
# was then `unsupported`): the router's log holds items under these ids, and normalizing
# them again must find the same ones.
IDS_BEFORE = {
    "feed_comment_add": "feed:ba9ae2bfa5f0f37b8a530a55e79bdce0410355a2",
    "feed_comment_edited": "feed:e6dca70845eb9ed1eef0b7ee02cd31612a285116",
    "feed_comment_remove": "feed:eff3b2d9f68bc653ce84acad02814f0cd2d7f383",
    "feed_reaction_comment_add": "feed:ae9b0b91a70b549291f782d7fb03fdf39c26f26f",
    "feed_status_add": "feed:37a881b23ada4023ce1ccdc1328cf452ab4c1c9b",
    "instagram_comment": "comments:f65a11e6a267926ed8a6b37d822ab44563aaf145",
    "instagram_live_comment": "live_comments:298e33c9da2dcbf832801d85de18679bffcd02c1",
    "instagram_mention": "mentions:c9f33e9f166052b8a91cc04e7b9abdf500808042",
    "instagram_unknown_field": "story_insights:78eae8691bb2794af3689781d97f4e3e684067ca",
}

NAMES = sorted(EXPECTED)


def body_of(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((COMMENT_FIXTURES / f"{name}.json").read_bytes())
    return body


def events_of(body: dict[str, Any], received: int = RECEIVED) -> list[events_pb2.Event]:
    return normalize_envelope(body, received_at_ms=received)


def changes_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for e in body["entry"] for c in e.get("changes", [])]


def test_every_fixture_has_its_expectation(comment_fixtures_dir: Path) -> None:
    assert comment_fixtures_dir == COMMENT_FIXTURES
    assert sorted(p.stem for p in comment_fixtures_dir.glob("*.json")) == NAMES
    assert (comment_fixtures_dir / "README.md").exists()


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_gives_its_events(name: str) -> None:
    body = body_of(name)
    raw = json.dumps(body).encode()
    events = normalize_envelope(parse_envelope(raw), received_at_ms=RECEIVED)
    expected = EXPECTED[name]
    assert len(events) == len(expected)
    platform = IG if body["object"] == "instagram" else FB
    page = body["entry"][0]["id"]
    changes = iter(changes_of(body))
    for event, (kind_body, timestamp_ms, direction) in zip(events, expected, strict=True):
        kind = event.WhichOneof("kind")
        assert getattr(event, kind) == kind_body, kind
        assert event.timestamp_ms == timestamp_ms
        assert event.direction == direction
        assert event.platform == platform and event.page_id == page
        assert event.received_at_ms == RECEIVED and not event.standby
        assert contract.unstorable(event) is None
        if kind == "message":
            continue
        change = next(changes)
        # The page's event, never a conversation's; the raw item is the change item.
        assert event.user_id == ""
        assert json.loads(event.raw_json) == change
        assert event.id == event_digest(change["field"], platform, page, change)


@pytest.mark.parametrize("name", sorted(IDS_BEFORE))
def test_ids_are_those_given_before_comments_were_modelled(name: str) -> None:
    [event] = [e for e in events_of(body_of(name)) if e.WhichOneof("kind") != "message"]
    assert event.id == IDS_BEFORE[name]


def test_an_unsupported_item_is_the_event_it_was() -> None:
    [event] = events_of(body_of("feed_status_add"))
    change = changes_of(body_of("feed_status_add"))[0]
    assert event == events_pb2.Event(
        id=IDS_BEFORE["feed_status_add"],
        platform=FB,
        page_id=PAGE,
        direction=OUTBOUND,
        timestamp_ms=CREATED_MS - 3_601_000,
        raw_json=json.dumps(change, ensure_ascii=False, separators=(",", ":")),
        received_at_ms=RECEIVED,
        unsupported=Unsupported(kind="feed"),
    )


@pytest.mark.parametrize("name", NAMES)
def test_the_same_body_again_gives_the_same_ids(name: str) -> None:
    body = body_of(name)
    first = events_of(body)
    again = events_of(copy.deepcopy(body), received=RECEIVED + 60_000)
    assert [e.id for e in again] == [e.id for e in first]
    # Delivered in another notification (another entry time): the same items, the same ids.
    later = copy.deepcopy(body)
    later["entry"][0]["time"] += 3_600
    assert [e.id for e in events_of(later)] == [e.id for e in first]


def test_distinct_items_get_distinct_ids() -> None:
    ids = [
        e.id
        for name in NAMES
        if name != "mixed_messaging_and_changes"
        for e in events_of(body_of(name))
    ]
    assert len(set(ids)) == len(ids)


def test_an_edit_is_ordered_by_when_it_happened_not_by_the_comments_creation() -> None:
    [added] = events_of(body_of("feed_comment_add"))
    [edited] = events_of(body_of("feed_comment_edited"))
    [removed] = events_of(body_of("feed_comment_remove"))
    assert added.comment.created_time_ms == edited.comment.created_time_ms == CREATED_MS
    assert added.timestamp_ms < edited.timestamp_ms < removed.timestamp_ms


@pytest.mark.parametrize(
    ("entry_time", "created", "expected"),
    [
        (1778163300, 1778163045, 1778163300_000),  # the entry's time, in seconds
        (1778163300123, 1778163045, 1778163300123),  # or in ms
        (None, 1778163045, 1778163045_000),  # else the comment's creation
        ("soon", "2026-05-07T14:10:45+0000", 1778163045_000),
        (None, None, RECEIVED),  # else the moment of receipt
    ],
)
def test_comment_time_is_the_entry_time_else_created_time_else_receipt(
    entry_time: Any, created: Any, expected: int
) -> None:
    body = body_of("feed_comment_add")
    body["entry"][0]["time"] = entry_time
    body["entry"][0]["changes"][0]["value"]["created_time"] = created
    [event] = events_of(body)
    assert event.WhichOneof("kind") == "comment"
    assert event.timestamp_ms == expected
    assert event.comment.created_time_ms == (0 if created is None else 1778163045_000)


def test_an_instagram_comment_without_entry_time_takes_the_time_of_receipt() -> None:
    body = body_of("instagram_comment")
    del body["entry"][0]["time"]
    [event] = events_of(body)
    assert event.comment.created_time_ms == 0 and event.timestamp_ms == RECEIVED


def _with_value(name: str, **changes: Any) -> dict[str, Any]:
    """The fixture with its (first) change's value edited; a None value removes the key."""
    body = body_of(name)
    value = body["entry"][0]["changes"][0]["value"]
    for key, new in changes.items():
        if new is None:
            value.pop(key, None)
        else:
            value[key] = new
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_with_value("feed_comment_add", comment_id=None), "feed"),
        (_with_value("feed_comment_add", post_id=None), "feed"),
        (_with_value("feed_comment_add", verb="block"), "feed"),
        (_with_value("feed_comment_add", verb=None), "feed"),
        (_with_value("feed_comment_add", comment_id="9" * (contract.MAX_MID + 1)), "feed"),
        (_with_value("feed_comment_add", item="like"), "feed"),
        (_with_value("feed_comment_add", item=None), "feed"),
        (_with_value("feed_reaction_post_add", **{"from": None}), "feed"),
        (_with_value("feed_reaction_post_add", verb="unreact"), "feed"),
        (_with_value("feed_reaction_post_add", reaction_type="x" * 33), "feed"),
        (_with_value("instagram_comment", media=None), "comments"),
        (_with_value("instagram_comment", media="18034856291047382"), "comments"),
        (_with_value("instagram_comment", id=None), "comments"),
        (_with_value("instagram_live_comment", id=[1]), "live_comments"),
        (_with_value("instagram_mention", media_id=None), "mentions"),
        (_with_value("instagram_mention", media_id="1" * (contract.MAX_MID + 1)), "mentions"),
    ],
)
def test_an_item_lacking_what_its_kind_needs_stays_raw_with_its_field_as_kind(
    body: dict[str, Any], field: str
) -> None:
    demoted: list[str] = []
    [event] = normalize_envelope(
        body, received_at_ms=RECEIVED, on_demoted=lambda _e, reason: demoted.append(reason)
    )
    change = changes_of(body)[0]
    assert event.WhichOneof("kind") == "unsupported" and event.unsupported.kind == field
    assert event.id == event_digest(field, event.platform, event.page_id, change)
    assert json.loads(event.raw_json) == change and event.user_id == ""
    created = change["value"].get("created_time")
    entry_ms = to_ms(body["entry"][0]["time"])
    assert event.timestamp_ms == (created * 1000 if created else entry_ms)
    assert contract.unstorable(event) is None and demoted == []


def test_each_field_is_modelled_on_its_own_platform_only() -> None:
    feed = body_of("feed_comment_add")
    comments = body_of("instagram_comment")
    [feed_on_ig] = normalize_envelope(feed, platform=IG, received_at_ms=RECEIVED)
    [comments_on_fb] = normalize_envelope(comments, platform=FB, received_at_ms=RECEIVED)
    assert feed_on_ig.unsupported.kind == "feed"
    assert comments_on_fb.unsupported.kind == "comments"


def test_author_ids_and_names_keep_their_bounds() -> None:
    body = _with_value("feed_comment_add", **{"from": {"id": "7" * 129, "name": "n" * 300}})
    [event] = events_of(body)
    assert event.comment.author_id == ""  # no real id is this long: the author is unknown
    assert event.comment.author_name == "n" * contract.MAX_NAME
    assert contract.unstorable(event) is None
    numeric = _with_value("feed_comment_add", **{"from": {"id": int(ANA)}}, comment_id=901)
    [event] = events_of(numeric)
    assert event.comment.author_id == ANA and event.comment.author_name == ""
    assert event.comment.comment_id == "901"


def test_a_comment_with_a_video_keeps_its_url() -> None:
    body = _with_value("feed_comment_add", video="https://video.xx.fbcdn.net/v/t42/clip.mp4")
    [event] = events_of(body)
    assert event.comment.attachment_url == "https://video.xx.fbcdn.net/v/t42/clip.mp4"


def test_randomly_mangled_comment_bodies_keep_the_contract() -> None:
    rng = random.Random(20261214)
    odd_values: list[Any] = [None, True, 0, -1, 1.5, 10**25, "", "x", [], {}, [None], {"id": 1}]
    bodies = [body_of(name) for name in NAMES]

    def mangle(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (rng.choice(odd_values) if rng.random() < 0.15 else mangle(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rng.choice(odd_values) if rng.random() < 0.15 else mangle(v) for v in value]
        return value

    for _ in range(60):
        for body in bodies:
            mangled = mangle(copy.deepcopy(body))
            for event in events_of(mangled):
                assert event.id and len(event.id) <= contract.MAX_EVENT_ID
                assert contract.unstorable(event) is None
                events_pb2.Event.FromString(event.SerializeToString())
                assert renormalize(event) == event


# ---------------------------------------------------------------- normalizing kept items again


@pytest.mark.parametrize("name", NAMES)
def test_normalizing_an_event_again_gives_the_same_event(name: str) -> None:
    for event in events_of(body_of(name)):
        assert renormalize(event) == event


def _as_kept_before(event: events_pb2.Event) -> events_pb2.Event:
    """The event as the normalizer gave it before comments were modelled."""
    change = json.loads(event.raw_json)
    value = change.get("value") or {}
    kept = events_pb2.Event()
    kept.CopyFrom(event)
    kept.ClearField(event.WhichOneof("kind"))
    kept.unsupported.kind = change["field"]
    created = value.get("created_time")
    kept.timestamp_ms = created * 1000 if created else event.timestamp_ms
    return kept


@pytest.mark.parametrize("name", ["feed_comment_edited", "feed_reaction_comment_add"])
def test_an_item_kept_raw_by_an_older_version_becomes_its_kind_under_its_id(name: str) -> None:
    [event] = events_of(body_of(name))
    kept = _as_kept_before(event)
    again = renormalize(kept)
    assert again.id == kept.id == IDS_BEFORE[name]
    assert again.WhichOneof("kind") == event.WhichOneof("kind")
    assert getattr(again, event.WhichOneof("kind")) == getattr(event, event.WhichOneof("kind"))
    # The entry's time is not in the raw item: the time it was kept under stands in.
    assert again.timestamp_ms == kept.timestamp_ms
    assert again.raw_json == kept.raw_json and again.received_at_ms == kept.received_at_ms


def test_messaging_items_are_normalized_again_as_messaging_items() -> None:
    [message, *_] = events_of(body_of("mixed_messaging_and_changes"))
    standby = events_pb2.Event()
    standby.CopyFrom(message)
    standby.standby = True
    assert renormalize(message) == message
    assert renormalize(standby).standby
    # A messaging item whose only key is `value`, read first as a change, is found all the
    # same by its id.
    [odd] = normalize_envelope(
        {"object": "page", "entry": [{"id": PAGE, "time": 1, "messaging": [{"value": 1}]}]},
        received_at_ms=RECEIVED,
    )
    assert odd.unsupported.kind == "value" and renormalize(odd) == odd


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '"text"'])
def test_an_event_without_a_readable_raw_item_is_kept_as_it_is(raw: str) -> None:
    [event] = events_of(body_of("feed_comment_add"))
    event.raw_json = raw
    assert renormalize(event) is event


def test_a_raw_item_that_gives_another_id_is_kept_as_it_is() -> None:
    [event] = events_of(body_of("feed_comment_add"))
    event.id = "feed:" + "0" * 40
    assert renormalize(event) is event


def test_normalize_change_alone_needs_no_envelope() -> None:
    change = changes_of(body_of("instagram_comment"))[0]
    event = normalize_change(change, platform=IG, page_id=IG_ACCOUNT, received_at_ms=RECEIVED)
    assert event.comment.comment_id == "17865799348089039"
    assert event.timestamp_ms == RECEIVED and event.comment.created_time_ms == 0
