"""Normalization of Meta webhook envelopes: every fixture's fields, every peer quirk, stable ids."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from pagewire import contract
from pagewire.contract import Platform
from pagewire.normalize import (
    MAX_DEPTH,
    MalformedEnvelope,
    TooManyItems,
    event_digest,
    id_str,
    item_kind,
    normalize_envelope,
    parse_envelope,
    platform_of,
    raw_json,
    to_ms,
)
from pagewire.proto import events_pb2

RECEIVED = 1_800_000_000_123
PAGE = "109384756201938"
PAGE_B = "117465829304716"
USER = "7294015836620194"
IG_ACCOUNT = "17841405822304914"
IG_USER = "6742019384756123"
FB = events_pb2.FACEBOOK
IG = events_pb2.INSTAGRAM
INBOUND = events_pb2.INBOUND
OUTBOUND = events_pb2.OUTBOUND
DASHBOARD_TEST = b'{"object":"page","entry":[{"messaging":[{"message":"TEST_MESSAGE"}]}]}'


def meta_files(fixtures: Path) -> list[Path]:
    return sorted(p for p in (fixtures / "meta").glob("*.json") if p.name != "SIGNATURES.json")


def peer_files(fixtures: Path) -> list[Path]:
    return sorted((fixtures / "peers").glob("*.json"))


def _fixture_root() -> Path:
    # Parametrization happens before fixtures exist; conftest resolves the same place.
    from tests.conftest import FIXTURES

    return FIXTURES


def events_of(path: Path, received: int = RECEIVED) -> list[events_pb2.Event]:
    return normalize_envelope(parse_envelope(path.read_bytes()), received_at_ms=received)


def one(path: Path) -> events_pb2.Event:
    events = events_of(path)
    assert len(events) == 1, [e.id for e in events]
    return events[0]


def items_of(path: Path) -> list[dict[str, Any]]:
    body = json.loads(path.read_bytes())
    return [
        item
        for body_entry in body["entry"]
        for key in ("messaging", "standby")
        for item in body_entry.get(key, [])
    ]


def envelope(obj: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"object": obj, "entry": list(entries)}


def entry(*items: Any, page: Any = PAGE, time: Any = 1778163045612, key: str = "messaging"):
    return {"id": page, "time": time, key: list(items)}


# ---------------------------------------------------------------- Meta fixtures, field by field


def test_01_text_message(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "01_text_message.json")
    assert event.platform == FB
    assert event.page_id == PAGE
    assert event.user_id == USER
    assert event.direction == INBOUND
    assert event.timestamp_ms == 1778163045000
    assert event.WhichOneof("kind") == "message"
    assert event.message.text == "Hola, ¿tienen envío a Medellín? 🙂"
    mid = "m_Dq8DMOAoUZJrXuusle2-z5zBU6wJHtdhSDR7BNMJq7EnKyEc-37nq1Ie82QIV33LY3f7ohJ-ilpzSDfiyib59O"
    assert event.message.mid == mid
    assert event.id == mid
    assert not event.message.is_echo
    assert event.message.app_id == ""
    assert not event.standby
    assert event.received_at_ms == RECEIVED
    # The raw item travels as readable compact JSON: accents and emoji unescaped.
    assert "Medellín? 🙂" in event.raw_json
    assert ": " not in event.raw_json
    assert json.loads(event.raw_json) == items_of(fixtures_dir / "meta" / "01_text_message.json")[0]


def test_02_batch_gives_every_item_of_every_entry(fixtures_dir: Path) -> None:
    events = events_of(fixtures_dir / "meta" / "02_batch_two_pages_two_messages.json")
    assert [(e.page_id, e.user_id, e.message.text, e.timestamp_ms) for e in events] == [
        (PAGE, USER, "Is the blue one still in stock?", 1778163103101),
        (PAGE, "6183920457712836", "hi", 1778163104377),
        (PAGE_B, "5502918364471029", "What time do you open on Sunday?", 1778163103990),
        (PAGE_B, "8841027365190453", "Order #48213 never arrived", 1778163104802),
    ]
    assert all(e.id == e.message.mid and e.direction == INBOUND for e in events)
    assert len({e.id for e in events}) == 4


def test_03_echo_from_our_app(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "03_echo_from_our_app.json")
    assert event.direction == OUTBOUND
    assert event.user_id == USER  # the recipient: the person the Page wrote to
    assert event.page_id == PAGE
    assert event.message.is_echo
    assert event.message.app_id == "1094728365019283"
    assert event.message.metadata == "outbox:3f9c2a7e-5b1d-4c8e-9a20-7d61e0b4c915"
    assert event.message.text == "Sí, enviamos a Medellín en 2-3 días hábiles."
    assert event.id == event.message.mid
    assert event.timestamp_ms == 1778163166533


def test_04_echo_without_app_id(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "04_echo_page_inbox_no_app_id.json")
    assert event.direction == OUTBOUND
    assert event.user_id == USER
    assert event.message.is_echo
    assert event.message.app_id == ""
    assert event.message.metadata == ""
    assert event.message.text.startswith("Hi! This is Laura")


def test_05_delivery(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "05_delivery.json")
    assert event.WhichOneof("kind") == "delivery"
    assert list(event.delivery.mids) == [
        "m_xwxX6-ACejreu1zyKuYg2QFUdWuPlvahre162DiZZehVvxQFdH_ZP13XsYqWGObRxsrpdV4FiqcosfWpVwn3Fd"
    ]
    assert event.delivery.watermark_ms == 1778163166533
    assert event.timestamp_ms == 1778163167388
    assert event.user_id == USER
    assert event.direction == INBOUND
    assert event.id.startswith("delivery:") and len(event.id) == len("delivery:") + 40


def test_06_read(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "06_read.json")
    assert event.WhichOneof("kind") == "read"
    assert event.read.watermark_ms == 1778163166533
    assert event.read.mid == ""
    assert event.timestamp_ms == 1778163185021
    assert event.user_id == USER
    assert event.id.startswith("read:")


def test_postback_fixture(fixtures_dir: Path) -> None:
    [event] = events_of(fixtures_dir / "meta" / "07_postback.json")
    assert event.WhichOneof("kind") == "postback"
    assert (event.postback.title, event.postback.payload) == ("Track my order", "TRACK_ORDER:48213")
    assert event.postback.mid.startswith("m_utgv9H5yv3hwgQYaxdkHNMn6")
    assert event.id == event.postback.mid
    assert (event.page_id, event.user_id, event.direction) == (
        "117465829304716",
        "5502918364471029",
        INBOUND,
    )


def test_reaction_fixture_react_then_unreact(fixtures_dir: Path) -> None:
    react, unreact = events_of(fixtures_dir / "meta" / "08_reaction_react_unreact.json")
    target = (
        "m_xwxX6-ACejreu1zyKuYg2QFUdWuPlvahre162DiZZehVvxQFdH_ZP13XsYqWGObRxsrpdV4FiqcosfWpVwn3Fd"
    )
    assert (react.reaction.mid, react.reaction.action) == (target, "react")
    assert (react.reaction.reaction, react.reaction.emoji) == ("love", "\u2764\ufe0f")
    assert (unreact.reaction.mid, unreact.reaction.action) == (target, "unreact")
    assert (unreact.reaction.reaction, unreact.reaction.emoji) == ("", "")
    assert react.user_id == unreact.user_id == USER
    assert react.id.startswith("reaction:") and unreact.id.startswith("reaction:")
    assert react.id != unreact.id


def test_edit_fixture(fixtures_dir: Path) -> None:
    [event] = events_of(fixtures_dir / "meta" / "14_message_edit.json")
    assert event.edit.mid.startswith("m_Dq8DMOAoUZJrXuusle2")
    assert event.edit.text == "Hola, ¿tienen envío a Bogotá?"
    assert event.edit.num_edit == 1
    assert event.id.startswith("edit:")


def test_referral_fixture(fixtures_dir: Path) -> None:
    [event] = events_of(fixtures_dir / "meta" / "17_referral_mme.json")
    assert (event.referral.ref, event.referral.source, event.referral.type) == (
        "summer_coupon",
        "SHORTLINK",
        "OPEN_THREAD",
    )
    assert event.id.startswith("referral:")
    assert event.direction == INBOUND and event.user_id and event.timestamp_ms


def test_08_react_and_unreact_get_distinct_ids(fixtures_dir: Path) -> None:
    react, unreact = events_of(fixtures_dir / "meta" / "08_reaction_react_unreact.json")
    assert react.id != unreact.id
    assert (react.timestamp_ms, unreact.timestamp_ms) == (1778163195433, 1778163202861)


def test_09_attachments_and_sticker(fixtures_dir: Path) -> None:
    image, sticker = events_of(fixtures_dir / "meta" / "09_attachment_image_and_sticker.json")
    assert image.message.text == ""
    [attachment] = image.message.attachments
    assert attachment.type == "image"
    # Meta escapes "/" as "\/" on the wire; the parsed URL is a normal URL.
    assert attachment.url.startswith("https://scontent.xx.fbcdn.net/v/t1.15752-9/498765432_")
    assert attachment.url.endswith("&oe=6A1B2C3D")
    assert attachment.sticker_id == ""
    assert json.loads(attachment.payload_json) == {"url": attachment.url}

    # The transition's `image` twin of the sticker is collapsed into the one sticker.
    assert [a.type for a in sticker.message.attachments] == ["sticker"]
    assert {a.sticker_id for a in sticker.message.attachments} == {"369239263222822"}
    assert all(
        a.url.startswith("https://scontent.xx.fbcdn.net/v/t39.1997-6/")
        for a in sticker.message.attachments
    )
    assert json.loads(sticker.message.attachments[0].payload_json)["sticker_id"] == 369239263222822
    assert sticker.id == sticker.message.mid != image.id


def test_10_quick_reply(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "10_quick_reply.json")
    assert event.message.text == "Refund"
    assert event.message.quick_reply_payload == "ISSUE_TYPE:REFUND"
    assert event.page_id == PAGE_B
    assert event.user_id == "8841027365190453"


def test_11_standby_is_flagged(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "11_standby_message.json")
    assert event.standby
    assert event.message.text == "ok thanks Laura, I'll wait"
    assert event.direction == INBOUND
    assert event.user_id == USER


def test_12_instagram_inbound(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "12_instagram_text.json")
    assert event.platform == IG
    assert event.page_id == IG_ACCOUNT
    assert event.user_id == IG_USER
    assert event.direction == INBOUND
    assert event.message.text == "hey! do you ship to Canada?"
    assert event.id == event.message.mid and event.id.startswith("aWdfbWVzc2FnZV9")
    assert event.timestamp_ms == 1778163645312


def test_13_instagram_echo(fixtures_dir: Path) -> None:
    event = one(fixtures_dir / "meta" / "13_instagram_echo.json")
    assert event.platform == IG
    assert event.page_id == IG_ACCOUNT
    assert event.user_id == IG_USER
    assert event.direction == OUTBOUND
    assert event.message.is_echo
    assert event.message.app_id == ""


def test_every_meta_fixture_gives_one_event_per_item(fixtures_dir: Path) -> None:
    for path in meta_files(fixtures_dir):
        events = events_of(path)
        assert len(events) == len(items_of(path)) >= 1, path.name
        for event in events:
            assert event.id and event.page_id and event.user_id, path.name
            assert event.platform in (FB, IG) and event.direction in (INBOUND, OUTBOUND)
            assert 1_700_000_000_000 < event.timestamp_ms < 1_900_000_000_000, path.name
            assert contract.unstorable(event) is None, path.name
            event.SerializeToString()


# ---------------------------------------------------------------- other projects' bodies


@pytest.mark.parametrize("path", peer_files(_fixture_root()), ids=lambda p: p.name)
def test_every_peer_body_normalizes(path: Path) -> None:
    events = events_of(path)
    assert len(events) == len(items_of(path)) >= 1
    for event in events:
        assert event.id
        assert event.platform == FB
        assert event.page_id
        assert event.timestamp_ms > 1_000_000_000_000
        assert event.WhichOneof("kind") in KINDS
        assert contract.unstorable(event) is None
        assert events_pb2.Event.FromString(event.SerializeToString()) == event
        json.loads(event.raw_json)


KINDS = {f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["kind"].fields}


def peer(fixtures: Path, name: str) -> list[events_pb2.Event]:
    return events_of(fixtures / "peers" / name)


def test_peer_float_timestamps_become_integers(fixtures_dir: Path) -> None:
    [echo] = peer(fixtures_dir, "002_bottender_echo.json")
    assert echo.timestamp_ms == 1492414608982
    assert echo.direction == OUTBOUND
    assert echo.user_id == "1244813222196986"
    assert echo.message.app_id == "1821152484774199"


def test_peer_seconds_timestamp_is_converted(fixtures_dir: Path) -> None:
    [optin] = peer(fixtures_dir, "013_bottender_optin.json")
    assert optin.timestamp_ms == 1234567890000
    assert optin.WhichOneof("kind") == "optin"
    assert (optin.page_id, optin.user_id) == ("PAGE_ID", "USER_ID")


def test_peer_delivery_without_timestamp_uses_watermark_and_reversed_parties(
    fixtures_dir: Path,
) -> None:
    [delivery] = peer(fixtures_dir, "009_bottender_delivery.json")
    assert delivery.timestamp_ms == 1458668856253
    assert delivery.delivery.watermark_ms == 1458668856253
    assert list(delivery.delivery.mids) == ["mid.1458668856218:ed81099e15d3f4f233"]
    # Sender is the Page here (reverse of live traffic): the person is the recipient.
    assert delivery.page_id == "404217156637689"
    assert delivery.user_id == "1423587017700273"


def test_peer_reversed_read_and_handover(fixtures_dir: Path) -> None:
    [read] = peer(fixtures_dir, "010_bottender_read.json")
    assert read.user_id == "1423587017700273"
    assert read.read.watermark_ms == 1458668856253
    for name in (
        "019_bottender_pass_thread_control.json",
        "021_bottender_request_thread_control.json",
    ):
        [event] = peer(fixtures_dir, name)
        assert event.user_id == "1423587017700273"
        assert event.WhichOneof("kind") == "handover"
        assert event.handover.action == name.split("_", 2)[2].removesuffix(".json")


def test_peer_numeric_ids_and_missing_timestamps(fixtures_dir: Path) -> None:
    [sticker] = peer(fixtures_dir, "038_botkit_sticker_text.json")
    assert (sticker.page_id, sticker.user_id) == ("2", "1")
    assert sticker.message.text == "Hello!"
    assert sticker.timestamp_ms == 1555372800000  # the entry time
    assert sticker.id.startswith("message:")  # no mid: a digest
    [echo] = peer(fixtures_dir, "039_botkit_echo.json")
    assert (echo.page_id, echo.user_id, echo.direction) == ("1", "2", OUTBOUND)
    assert echo.id.startswith("message:")
    [read] = peer(fixtures_dir, "040_botkit_read.json")
    assert read.read.mid == "1"
    assert read.read.watermark_ms == 0
    assert read.timestamp_ms == 1555372800000


def test_peer_big_integers_stay_exact(fixtures_dir: Path) -> None:
    [nlp] = peer(fixtures_dir, "028_fbmessenger_message_nlp.json")
    assert nlp.message.app_id == "184719329217930000"
    assert not nlp.message.is_echo and nlp.direction == INBOUND
    assert nlp.message.quick_reply_payload == "Hi, I am a quick reply!"
    assert [a.url for a in nlp.message.attachments] == ["https://www.example.com/1.jpg"]
    [checkout] = peer(fixtures_dir, "015_bottender_checkout_update.json")
    assert '"id":10105655000959552' in checkout.raw_json
    [location] = peer(fixtures_dir, "029_fbmessenger_location.json")
    assert location.message.app_id == "184719329222930001"
    assert location.message.attachments[0].type == "location"
    assert json.loads(location.message.attachments[0].payload_json)["coordinates"]["lat"] == (
        "39.920_770"
    )


def test_peer_fallback_and_sticker_attachments(fixtures_dir: Path) -> None:
    [fallback] = peer(fixtures_dir, "006_bottender_fallback.json")
    [attachment] = fallback.message.attachments
    assert (attachment.type, attachment.url, attachment.title) == (
        "fallback",
        "URL_OF_THE_ATTACHMENT",
        "TITLE_OF_THE_URL_ATTACHMENT",
    )
    assert attachment.payload_json == ""
    [sticker] = peer(fixtures_dir, "007_bottender_sticker.json")
    assert sticker.message.attachments[0].sticker_id == "369239263222822"


def test_peer_events_without_sender(fixtures_dir: Path) -> None:
    [policy] = peer(fixtures_dir, "017_bottender_policy_enforcement.json")
    assert policy.policy_enforcement.action == "block"
    assert policy.policy_enforcement.reason.startswith("The bot violated our Platform Policies")
    assert policy.user_id == ""
    [roles] = peer(fixtures_dir, "018_bottender_app_roles.json")
    assert roles.handover.action == "app_roles"
    assert roles.user_id == ""
    [policy2] = peer(fixtures_dir, "034_fbmessenger_policy_enforcement.json")
    assert policy2.WhichOneof("kind") == "policy_enforcement"


def test_peer_placeholder_standby_item_without_content(fixtures_dir: Path) -> None:
    [event] = peer(fixtures_dir, "004_bottender_standby.json")
    assert event.standby
    assert (event.page_id, event.user_id) == ("<PAGE_ID>", "<USER_ID>")
    assert event.unsupported.kind == "unknown"
    assert event.timestamp_ms == 1458692752478


def test_peer_message_with_prior_message_is_a_message(fixtures_dir: Path) -> None:
    [event] = peer(fixtures_dir, "037_fbmessenger_prior_message.json")
    assert event.WhichOneof("kind") == "message"
    assert event.message.text == "Hello, bot!"
    assert (event.page_id, event.user_id) == ("PAGE_ID", "SENDER_ID")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("011_bottender_postback.json", "postback"),
        ("020_bottender_take_thread_control.json", "handover"),
        ("023_bottender_referral.json", "referral"),
        ("024_bottender_postback_referral.json", "postback"),
        ("032_fbmessenger_reaction.json", "reaction"),
        ("036_fbmessenger_optin_user_ref.json", "optin"),
    ],
)
def test_peer_kinds_normalized(fixtures_dir: Path, name: str, kind: str) -> None:
    [event] = peer(fixtures_dir, name)
    assert event.WhichOneof("kind") == kind


def test_peer_postback_referral_and_optin_fields(fixtures_dir: Path) -> None:
    [postback] = peer(fixtures_dir, "024_bottender_postback_referral.json")
    assert json.loads(postback.postback.referral_json)["source"]
    [optin] = peer(fixtures_dir, "036_fbmessenger_optin_user_ref.json")
    assert optin.optin.ref and optin.optin.user_ref
    [reaction] = peer(fixtures_dir, "032_fbmessenger_reaction.json")
    assert reaction.reaction.emoji == "\U0001f44d"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("012_bottender_game_play.json", "game_play"),
        ("014_bottender_payment.json", "payment"),
        ("015_bottender_checkout_update.json", "checkout_update"),
        ("016_bottender_pre_checkout.json", "pre_checkout"),
        ("026_bottender_branded_camera.json", "branded_camera"),
        ("031_fbmessenger_message_request.json", "message_request"),
        ("033_fbmessenger_account_linking.json", "account_linking"),
    ],
)
def test_peer_unsupported_kinds(fixtures_dir: Path, name: str, kind: str) -> None:
    [event] = peer(fixtures_dir, name)
    assert event.unsupported.kind == kind
    assert event.id.startswith(kind + ":")


# ---------------------------------------------------------------- ids


def test_ids_are_stable_across_redeliveries(fixtures_dir: Path) -> None:
    for path in [*meta_files(fixtures_dir), *peer_files(fixtures_dir)]:
        first = [e.id for e in events_of(path, received=RECEIVED)]
        # A redelivery: received later, and Meta stamps the entry with a new time.
        body = json.loads(path.read_bytes())
        for item_entry in body["entry"]:
            item_entry["time"] = 1_900_000_000_000
        again = normalize_envelope(body, received_at_ms=RECEIVED + 3_600_000)
        assert [e.id for e in again] == first, path.name


def test_ids_are_distinct_for_distinct_items(fixtures_dir: Path) -> None:
    seen: dict[str, tuple[str, str]] = {}
    for path in [*meta_files(fixtures_dir), *peer_files(fixtures_dir)]:
        for event in events_of(path):
            if event.WhichOneof("kind") == "message" and event.message.mid:
                continue  # the mid is the id; peers reuse mids on purpose
            key = (event.page_id, event.raw_json)
            assert seen.setdefault(event.id, key) == key, (path.name, event.id)
    assert len(seen) > 30


def test_same_item_on_another_page_or_platform_gets_another_id() -> None:
    item = {"sender": {"id": "1"}, "recipient": {"id": PAGE}, "read": {"watermark": 1778163166533}}
    fb = normalize_envelope(envelope("page", entry(item)), received_at_ms=RECEIVED)
    other_page = normalize_envelope(envelope("page", entry(item, page="2")), received_at_ms=1)
    ig = normalize_envelope(envelope("instagram", entry(item)), received_at_ms=RECEIVED)
    assert len({fb[0].id, other_page[0].id, ig[0].id}) == 3


def test_digest_ignores_key_order() -> None:
    a = {"sender": {"id": "1"}, "read": {"watermark": 5, "seq": 1}}
    b = {"read": {"seq": 1, "watermark": 5}, "sender": {"id": "1"}}
    assert event_digest("read", FB, PAGE, a) == event_digest("read", FB, PAGE, b)
    assert event_digest("read", FB, PAGE, a) != event_digest("read", FB, PAGE, {**a, "x": 1})


def test_unsend_does_not_collide_with_the_message_it_removes() -> None:
    mid = "aWdfbWVzc2FnZV9pdGVt"
    original = {
        "sender": {"id": IG_USER},
        "recipient": {"id": IG_ACCOUNT},
        "timestamp": 1,
        "message": {"mid": mid, "text": "hi"},
    }
    unsend = {
        "sender": {"id": IG_USER},
        "recipient": {"id": IG_ACCOUNT},
        "timestamp": 2,
        "message": {"mid": mid, "is_deleted": True},
    }
    events = normalize_envelope(
        envelope("instagram", entry(original, unsend, page=IG_ACCOUNT)), received_at_ms=RECEIVED
    )
    assert [e.id for e in events] == [mid, "deleted:" + mid]
    assert events[1].message.is_deleted and events[1].message.mid == mid


# ---------------------------------------------------------------- envelope shapes


def test_dashboard_test_body_gives_no_events() -> None:
    assert normalize_envelope(parse_envelope(DASHBOARD_TEST), received_at_ms=RECEIVED) == []


def test_standby_and_messaging_in_one_entry_both_count() -> None:
    a = {
        "sender": {"id": "1"},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "message": {"mid": "m_a", "text": "a"},
    }
    b = {
        "sender": {"id": "2"},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045001,
        "message": {"mid": "m_b", "text": "b"},
    }
    both = {"id": PAGE, "time": 1, "messaging": [a], "standby": [b], "changes": [{"field": "x"}]}
    events = normalize_envelope(envelope("page", both), received_at_ms=RECEIVED)
    assert [(e.id, e.standby) for e in events[:2]] == [("m_a", False), ("m_b", True)]
    assert [e.unsupported.kind for e in events[2:]] == ["x"]


@pytest.mark.parametrize(
    "body",
    [
        {"object": "page", "entry": [None, 1, "x", [], {"id": None}, {"id": {"x": 1}}]},
        {"object": "page", "entry": [{"id": PAGE, "messaging": {"not": "a list"}}]},
        {"object": "page", "entry": [{"id": PAGE, "messaging": [None, 1, "s", []]}]},
        {"object": "page", "entry": [{"id": PAGE, "changes": [None, 1, "feed", []]}]},
        {"object": "page", "entry": [{"id": PAGE, "changes": {"field": "feed"}}]},
        {"object": "user", "entry": [entry({"message": {"mid": "m"}})]},
        {"object": None, "entry": [entry({"message": {"mid": "m"}})]},
        {"object": "page"},
        {"object": "page", "entry": "nope"},
    ],
)
def test_envelopes_without_items_give_no_events(body: dict[str, Any]) -> None:
    assert normalize_envelope(body, received_at_ms=RECEIVED) == []


@pytest.mark.parametrize(
    ("item", "kind"),
    [
        ({"message": "TEST_MESSAGE"}, "message"),
        ({"sender": 5, "recipient": "x", "message": {"mid": 7, "text": 5}}, "message"),
        ({"sender": {"id": [1]}, "message": {"attachments": "x", "quick_reply": "y"}}, "message"),
        ({"message": {"attachments": [None, 1, {"type": 3, "payload": [1]}]}}, "message"),
        ({"delivery": None}, "delivery"),
        ({"delivery": {"mids": "m", "watermark": "soon"}}, "delivery"),
        ({"read": {"watermark": float("inf")}}, "read"),
        ({"timestamp": "yesterday", "postback": None}, "postback"),
        ({"timestamp": 10**30}, "unknown"),
        ({}, "unknown"),
        ({"sender": {"id": True}, "weird\ud800key": 1}, "weird\ufffdkey"),
    ],
)
def test_odd_items_never_raise(item: dict[str, Any], kind: str) -> None:
    events = normalize_envelope(envelope("page", entry(item)), received_at_ms=RECEIVED)
    [event] = events
    assert item_kind(item) == kind
    assert event.id and event.page_id == PAGE
    assert event.timestamp_ms == 1778163045612  # falls back to the entry time
    events_pb2.Event.FromString(event.SerializeToString())


def test_odd_message_fields_read_as_absent() -> None:
    item = {"sender": 5, "recipient": "x", "message": {"mid": 7, "text": 5, "is_echo": "yes"}}
    [event] = normalize_envelope(envelope("page", entry(item)), received_at_ms=RECEIVED)
    assert event.id == "7"
    assert event.message.text == ""
    assert not event.message.is_echo
    assert event.user_id == ""


def test_string_message_becomes_unsupported_message() -> None:
    item = {"sender": {"id": "1"}, "recipient": {"id": PAGE}, "message": "TEST_MESSAGE"}
    [event] = normalize_envelope(envelope("page", entry(item)), received_at_ms=RECEIVED)
    assert event.unsupported.kind == "message"
    assert event.user_id == "1"
    assert json.loads(event.raw_json) == item


def test_lone_surrogates_do_not_break_protobuf() -> None:
    body = (
        b'{"object":"page","entry":[{"id":"1","messaging":[{"sender":{"id":"2"},'
        b'"message":{"mid":"m_x","text":"half \\ud83d emoji"}}]}]}'
    )
    [event] = normalize_envelope(parse_envelope(body), received_at_ms=RECEIVED)
    assert event.message.text == "half \ufffd emoji"
    assert "\\ud83d" in event.raw_json  # the raw item keeps the exact escape
    events_pb2.Event.FromString(event.SerializeToString())


def test_instagram_seen_and_reply_to() -> None:
    seen = {
        "sender": {"id": IG_USER},
        "recipient": {"id": IG_ACCOUNT},
        "timestamp": 1778163705118,
        "read": {"mid": "aWdf_read"},
    }
    reply = {
        "sender": {"id": IG_USER},
        "recipient": {"id": IG_ACCOUNT},
        "timestamp": 1778163705119,
        "message": {
            "mid": "aWdf_reply",
            "text": "this one",
            "reply_to": {"mid": "aWdf_orig"},
            "is_unsupported": True,
        },
    }
    events = normalize_envelope(
        envelope("instagram", entry(seen, reply, page=int(IG_ACCOUNT))), received_at_ms=RECEIVED
    )
    assert [e.page_id for e in events] == [IG_ACCOUNT, IG_ACCOUNT]
    assert events[0].read.mid == "aWdf_read" and events[0].read.watermark_ms == 0
    assert events[1].message.reply_to_mid == "aWdf_orig"
    assert events[1].message.is_unsupported


def test_message_level_sticker_id_fills_image_attachments_only() -> None:
    message = {
        "mid": "m_s",
        "sticker_id": 369239263222822,
        "attachments": [
            {"type": "image", "payload": {"url": "https://x/1.png"}},
            {"type": "file", "payload": {"url": "https://x/1.pdf"}},
        ],
    }
    item = {"sender": {"id": USER}, "recipient": {"id": PAGE}, "message": message}
    [event] = normalize_envelope(envelope("page", entry(item)), received_at_ms=1)
    assert [a.sticker_id for a in event.message.attachments] == ["369239263222822", ""]


def test_received_at_defaults_to_now() -> None:
    [event] = normalize_envelope(envelope("page", entry({"message": {"mid": "m"}})))
    assert event.received_at_ms > 1_700_000_000_000


def test_randomly_mangled_fixtures_never_raise(fixtures_dir: Path) -> None:
    """Replaces values at random with values of other types; every result must serialize."""
    rng = random.Random(20260507)
    odd_values: list[Any] = [None, True, 0, -1, 1.5, 10**25, "", "x", [], {}, [None], {"id": 1}]
    bodies = [
        json.loads(p.read_bytes()) for p in [*meta_files(fixtures_dir), *peer_files(fixtures_dir)]
    ]
    bodies += [change_body(change) for change in CHANGES.values()]
    bodies.append(envelope("page", {**entry(*OVERLONG_MID_ITEMS.values()), "changes": [FEED_ADD]}))

    def mangle(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (rng.choice(odd_values) if rng.random() < 0.15 else mangle(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rng.choice(odd_values) if rng.random() < 0.15 else mangle(v) for v in value]
        return value

    for _ in range(40):
        for body in bodies:
            mangled = mangle(copy.deepcopy(body))
            for event in normalize_envelope(mangled, received_at_ms=RECEIVED):
                assert event.id and len(event.id) <= contract.MAX_EVENT_ID
                assert contract.unstorable(event) is None
                events_pb2.Event.FromString(event.SerializeToString())


# ---------------------------------------------------------------- parsing and helpers


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"page"',
        b'{"object":"page"}',
        b'{"object":"page","entry":{}}',
        b'{"object":"page","entry":[NaN]}',
        b'{"object":"page","entry":[],"x":Infinity}',
        b'{"object":"page","entry":[\xff]}',
        b"\xef\xbb\xbf{}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_parse_envelope_refuses_non_envelopes(body: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        parse_envelope(body)


def nested(depth: int) -> bytes:
    inner = b"[" * depth + b"]" * depth
    return b'{"object":"page","entry":[{"id":"1","messaging":[{"message":{"x":' + inner + b"}}]}]}"


def test_parse_envelope_refuses_hostile_nesting_but_not_deep_payloads() -> None:
    # Deep enough to hit the recursion limit when re-encoded, yet parseable: refused.
    with pytest.raises(MalformedEnvelope, match="nested deeper"):
        parse_envelope(nested(900))
    [event] = normalize_envelope(parse_envelope(nested(40)), received_at_ms=RECEIVED)
    assert event.raw_json.count("[") == 40


def test_the_depth_limit_is_exact() -> None:
    # nested(n)'s innermost list sits at depth 6 + n (envelope, entry list, entry,
    # messaging list, item, message, then the n lists).
    assert MAX_DEPTH == 64
    parse_envelope(nested(58))
    with pytest.raises(MalformedEnvelope, match="nested deeper"):
        parse_envelope(nested(59))
    # A scalar one level further down counts as well.
    parse_envelope(nested(57).replace(b"[]", b"[1]"))
    with pytest.raises(MalformedEnvelope, match="nested deeper"):
        parse_envelope(nested(58).replace(b"[]", b"[1]"))


def test_parse_envelope_keeps_big_integers_exact() -> None:
    data = parse_envelope(b'{"object":"page","entry":[{"id":184719329217930000}]}')
    assert id_str(data["entry"][0]["id"]) == "184719329217930000"


def test_parse_envelope_is_json_loads_on_every_fixture(fixtures_dir: Path) -> None:
    for path in [*meta_files(fixtures_dir), *peer_files(fixtures_dir)]:
        raw = path.read_bytes()
        assert parse_envelope(raw, max_items=1000) == json.loads(raw), path.name


@pytest.mark.parametrize(
    "body",
    [
        b' \n\t{"object":"page","entry":[]}\r\n ',
        b'\xef\xbb\xbf{"object":"page","entry":[]}',  # a UTF-8 BOM, as json.loads takes it
        '{"object":"page","entry":[]}'.encode("utf-16"),
    ],
)
def test_parse_envelope_takes_what_json_loads_takes(body: bytes) -> None:
    assert parse_envelope(body) == {"object": "page", "entry": []}


@pytest.mark.parametrize(
    "body",
    [
        b'{"object":"page","entry":[]} x',
        b'{"object":"page","entry":[]}{}',
        b'{"object":"page","entry":[],}',
        b'{"object":"page","entry":[]',
        b'{"object" "page","entry":[]}',
    ],
)
def test_parse_envelope_refuses_what_json_loads_refuses(body: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises(MalformedEnvelope, match="not valid JSON"):
        parse_envelope(body)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"object":"instagram","object":"page","entry":[]}', "object"),
        (b'{"object":"page","entry":[],"object":"page"}', "object"),
        # An escape spells the same key: the decoded keys are compared, not the bytes.
        (b'{"obj\\u0065ct":"instagram","object":"page","entry":[]}', "object"),
        (b'{"object":"page","entry":[],"entry":[]}', "entry"),
    ],
)
def test_parse_envelope_refuses_a_top_level_key_given_twice(body: bytes, key: str) -> None:
    with pytest.raises(MalformedEnvelope, match=f'top-level key "{key}" appears twice'):
        parse_envelope(body)


def test_duplicate_keys_inside_items_are_the_decoders_business() -> None:
    # Only the envelope's own keys decide anything here; inside an item the last one wins,
    # as everywhere in Python, and the item is stored raw as it was read.
    body = b'{"object":"page","entry":[{"id":"1","messaging":[{"message":{"mid":"a","mid":"b"}}]}]}'
    assert parse_envelope(body)["entry"][0]["messaging"][0]["message"] == {"mid": "b"}


def items_body(entries: int = 1, **lists: int) -> bytes:
    """An envelope of `entries` entries, the first with `lists[key]` empty items per list."""
    first = {"id": PAGE, **{key: [{}] * count for key, count in lists.items()}}
    return json.dumps({"object": "page", "entry": [first] + [{}] * (entries - 1)}).encode()


@pytest.mark.parametrize(
    ("body", "items"),
    [
        (items_body(messaging=999), 1000),
        (items_body(messaging=1000), 1001),
        (items_body(standby=500, messaging=499), 1000),
        (items_body(standby=500, messaging=500), 1001),
        (items_body(changes=1000), 1001),  # changes count although they are not events yet
        (items_body(entries=1000), 1000),
        (items_body(entries=1001), 1001),
        (items_body(entries=2, messaging=999), 1001),
    ],
)
def test_the_item_cap_counts_entries_and_their_items(body: bytes, items: int) -> None:
    if items <= 1000:
        assert parse_envelope(body, max_items=1000)["entry"]
    else:
        with pytest.raises(TooManyItems, match="more than 1000 items"):
            parse_envelope(body, max_items=1000)
    parse_envelope(body)  # without a cap nothing is counted


def test_the_item_cap_ignores_what_is_not_an_item_list() -> None:
    body = json.dumps(
        {
            "object": "page",
            "entry": [{"id": PAGE, "messaging": {"x": [{}] * 2000}, "y": [1] * 2000}],
        }
    ).encode()
    assert parse_envelope(body, max_items=10)


def test_the_item_cap_is_checked_before_the_depth_walk() -> None:
    # More items and hostile nesting: the cheap check answers first.
    deep = "[" * 100 + "]" * 100
    body = ('{"object":"page","entry":[{"messaging":[' + ",".join([deep] * 20) + "]}]}").encode()
    with pytest.raises(TooManyItems):
        parse_envelope(body, max_items=10)
    with pytest.raises(MalformedEnvelope, match="nested deeper"):
        parse_envelope(body, max_items=100)


def test_platform_of() -> None:
    assert platform_of({"object": "page"}) is Platform.FACEBOOK
    assert platform_of({"object": "instagram"}) is Platform.INSTAGRAM
    assert platform_of({"object": "whatsapp_business_account"}) is None
    assert platform_of({"object": ["page"]}) is None


def test_the_platform_passed_in_wins_over_the_body() -> None:
    item = {"sender": {"id": "1"}, "recipient": {"id": PAGE}, "read": {"watermark": 1778163166533}}
    body = envelope("page", entry(item))
    [from_body] = normalize_envelope(body, received_at_ms=RECEIVED)
    [as_instagram] = normalize_envelope(body, platform=IG, received_at_ms=RECEIVED)
    assert (from_body.platform, as_instagram.platform) == (FB, IG)
    assert as_instagram.id != from_body.id  # the platform is part of the digest
    assert normalize_envelope(envelope("user", entry(item)), platform=FB)[0].platform == FB


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1778163045000, 1778163045000),
        (1778163045000.0, 1778163045000),
        (1492414608982.0, 1492414608982),
        (1665424533, 1665424533000),
        (1665424533.5, 1665424533500),
        (1234567890, 1234567890000),
        ("1458668856253", 1458668856253),
        ("1665424533.25", 1665424533250),
        (99_999_999_999, 99_999_999_999_000),
        (100_000_000_000, 100_000_000_000),
        (0, None),
        (-5, None),
        (True, None),
        (None, None),
        ("soon", None),
        (float("nan"), None),
        (float("inf"), None),
        (-1.797693134862316e305, None),  # times 1000 is -inf: found by tests/fuzz
        (1.797693134862316e305, None),
        (2**63, None),
        ([1], None),
    ],
)
def test_to_ms(value: object, expected: int | None) -> None:
    assert to_ms(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("109384756201938", "109384756201938"),
        (109384756201938, "109384756201938"),
        (184719329217930000, "184719329217930000"),
        (2.0, "2"),
        (2.5, ""),
        (True, ""),
        (None, ""),
        ({"id": 1}, ""),
        ("<PAGE_ID>", "<PAGE_ID>"),
    ],
)
def test_id_str(value: object, expected: str) -> None:
    assert id_str(value) == expected


def test_raw_json_is_compact_and_readable() -> None:
    assert raw_json({"text": "Medellín 🙂", "n": [1, 2]}) == '{"text":"Medellín 🙂","n":[1,2]}'


def test_instagram_story_reply_and_mention() -> None:
    body = {
        "object": "instagram",
        "entry": [
            {
                "id": "17841405822304914",
                "time": 1778163300000,
                "messaging": [
                    {
                        "sender": {"id": "5837201946638120"},
                        "recipient": {"id": "17841405822304914"},
                        "timestamp": 1778163299000,
                        "message": {
                            "mid": "aWdfZAG1faWQ6story",
                            "text": "love this!",
                            "reply_to": {
                                "story": {"url": "https://lookaside.fbsbx.com/s", "id": "1799"}
                            },
                            "attachments": [
                                {
                                    "type": "story_mention",
                                    "payload": {"url": "https://lookaside.fbsbx.com/m"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    [event] = normalize_envelope(body)
    assert event.platform == events_pb2.INSTAGRAM
    assert event.message.reply_to_story_url == "https://lookaside.fbsbx.com/s"
    assert event.message.reply_to_story_id == "1799"
    assert [(a.type, a.url) for a in event.message.attachments] == [
        ("story_mention", "https://lookaside.fbsbx.com/m")
    ]


def test_item_without_its_person_is_kept_raw_for_the_page() -> None:
    body = {"object": "page", "entry": [{"id": "109384756201938", "messaging": [{"message": {}}]}]}
    [event] = normalize_envelope(body)
    assert event.WhichOneof("kind") == "unsupported"
    assert event.unsupported.kind == "message"
    assert event.user_id == "" and event.raw_json == '{"message":{}}'


def test_nul_characters_never_reach_the_database() -> None:
    body = {
        "object": "page",
        "entry": [
            {
                "id": "109384756201938",
                "messaging": [
                    {
                        "sender": {"id": "7\x00"},
                        "recipient": {"id": "109384756201938"},
                        "timestamp": 1778163045000,
                        "message": {"mid": "m_\x00", "text": "a\x00b"},
                    }
                ],
            }
        ],
    }
    [event] = normalize_envelope(body)
    assert "\x00" not in event.user_id + event.message.mid + event.message.text + event.id
    assert event.message.text == "a\ufffdb"


def test_ids_longer_than_any_real_id_read_as_absent() -> None:
    long_page = {"object": "page", "entry": [{"id": "0" * 129, "messaging": [{"message": {}}]}]}
    assert normalize_envelope(long_page) == []
    item = {
        "sender": {"id": "7" * 200},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "message": {"mid": "m" * 600, "text": "hi"},
    }
    [event] = normalize_envelope(envelope("page", entry(item)))
    assert event.user_id == "" and event.unsupported.kind == "message"
    assert len(event.id) <= 512


# ---------------------------------------------------------------- changes[] (feed, comments, ...)

COMMENTER = "6183920457712836"
CREATED_S = 1778163045
FEED_ADD = {
    "field": "feed",
    "value": {
        "from": {"id": COMMENTER, "name": "Ana Morales"},
        "post": {"status_type": "added_photos", "is_published": True, "id": f"{PAGE}_901"},
        "message": "Is the blue one still available?",
        "post_id": f"{PAGE}_901",
        "comment_id": "901_4471",
        "created_time": CREATED_S,
        "item": "comment",
        "parent_id": f"{PAGE}_901",
        "verb": "add",
    },
}
CHANGES: dict[str, dict[str, Any]] = {
    "feed_comment_add": FEED_ADD,
    "feed_comment_edited": {
        "field": "feed",
        "value": {
            **FEED_ADD["value"],
            "message": "Is the blue one still available in M?",
            "verb": "edited",
            "created_time": CREATED_S + 60,
        },
    },
    "feed_comment_remove": {
        "field": "feed",
        "value": {
            "from": {"id": COMMENTER, "name": "Ana Morales"},
            "parent_id": f"{PAGE}_901",
            "comment_id": "901_4471",
            "post_id": f"{PAGE}_901",
            "created_time": CREATED_S + 120,
            "item": "comment",
            "verb": "remove",
        },
    },
    "feed_reaction": {
        "field": "feed",
        "value": {
            "from": {"id": COMMENTER, "name": "Ana Morales"},
            "post_id": f"{PAGE}_901",
            "created_time": CREATED_S + 5,
            "item": "reaction",
            "parent_id": f"{PAGE}_901",
            "reaction_type": "love",
            "verb": "add",
        },
    },
    "instagram_comment": {
        "field": "comments",
        "value": {
            "from": {"id": IG_USER, "username": "ana.m"},
            "media": {"id": "17990001", "media_product_type": "FEED"},
            "id": "17865799348089039",
            "text": "Love this colour",
        },
    },
    "instagram_live_comment": {
        "field": "live_comments",
        "value": {
            "from": {"id": IG_USER, "username": "ana.m"},
            "media": {"id": "17990002", "media_product_type": "LIVE"},
            "id": "17865799348089040",
            "text": "hello from the live",
        },
    },
    "instagram_mention": {
        "field": "mentions",
        "value": {"media_id": "17918195224117851", "comment_id": "17894227972186120"},
    },
    "unknown_field": {
        "field": "story_insights",
        "value": {"media_id": "17918195224117852", "impressions": 44, "reach": 30},
    },
}
# name → (field, the event's kind).
CHANGE_KINDS = {
    "feed_comment_add": ("feed", "comment"),
    "feed_comment_edited": ("feed", "comment"),
    "feed_comment_remove": ("feed", "comment"),
    "feed_reaction": ("feed", "post_reaction"),
    "instagram_comment": ("comments", "comment"),
    "instagram_live_comment": ("live_comments", "comment"),
    "instagram_mention": ("mentions", "mention"),
    "unknown_field": ("story_insights", "unsupported"),
}


def change_body(*changes: Any, page: Any = None, time: Any = 1778163045612) -> dict[str, Any]:
    """An envelope of one entry carrying `changes`: Instagram's for comments and mentions."""
    first = changes[0] if changes else {}
    instagram = isinstance(first, dict) and first.get("field") in (
        "comments",
        "live_comments",
        "mentions",
    )
    obj, default_page = ("instagram", IG_ACCOUNT) if instagram else ("page", PAGE)
    return envelope(
        obj, {"id": default_page if page is None else page, "time": time, "changes": list(changes)}
    )


@pytest.mark.parametrize("name", list(CHANGES), ids=list(CHANGES))
def test_every_change_item_becomes_one_event_of_the_page(name: str) -> None:
    change = CHANGES[name]
    field, kind = CHANGE_KINDS[name]
    body = change_body(change)
    [event] = normalize_envelope(body, received_at_ms=RECEIVED)
    page = body["entry"][0]["id"]
    assert event.WhichOneof("kind") == kind
    assert kind != "unsupported" or event.unsupported.kind == field
    assert json.loads(event.raw_json) == change
    assert event.page_id == page
    assert event.platform == (IG if body["object"] == "instagram" else FB)
    assert event.id == event_digest(field, event.platform, page, change)
    assert not event.standby and event.received_at_ms == RECEIVED
    assert contract.unstorable(event) is None
    # The page's event, not a conversation's: the author is in the kind's fields.
    assert event.user_id == ""
    assert event.direction == INBOUND
    # A comment, reaction or mention happened when Meta notified it; an item kept raw
    # keeps its creation time first.
    created = change["value"].get("created_time")
    expected = 1778163045612 if kind != "unsupported" or not created else created * 1000
    assert event.timestamp_ms == expected
    # Meta's redelivery of the same body gives the same id.
    [again] = normalize_envelope(copy.deepcopy(body), received_at_ms=RECEIVED + 999)
    assert again.id == event.id


def test_distinct_change_items_get_distinct_ids() -> None:
    events = [e for c in CHANGES.values() for e in normalize_envelope(change_body(c), platform=FB)]
    assert len({e.id for e in events}) == len(CHANGES)
    # The same comment on another page, or on the other platform, is another item too.
    on_b = normalize_envelope(change_body(FEED_ADD, page=PAGE_B))[0]
    as_ig = normalize_envelope(change_body(FEED_ADD), platform=IG)[0]
    assert len({events[0].id, on_b.id, as_ig.id}) == 3


def test_change_ids_ignore_key_order_and_the_entry_time() -> None:
    reordered = {"value": dict(reversed(list(FEED_ADD["value"].items()))), "field": "feed"}
    [a] = normalize_envelope(change_body(FEED_ADD, time=1), received_at_ms=RECEIVED)
    [b] = normalize_envelope(change_body(reordered, time=2), received_at_ms=RECEIVED)
    assert a.id == b.id


def test_one_entry_mixing_messaging_standby_and_changes_gives_every_item() -> None:
    message = {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "message": {"mid": "m_mixed", "text": "hi"},
    }
    mixed = {
        "id": PAGE,
        "time": 1778163045612,
        "messaging": [message],
        "standby": [{**message, "message": {"mid": "m_standby"}}],
        "changes": [FEED_ADD, CHANGES["feed_reaction"]],
    }
    events = normalize_envelope(envelope("page", mixed), received_at_ms=RECEIVED)
    assert [(e.WhichOneof("kind"), e.id.split(":")[0]) for e in events] == [
        ("message", "m_mixed"),
        ("message", "m_standby"),
        ("comment", "feed"),
        ("post_reaction", "feed"),
    ]
    assert len({e.id for e in events}) == 4


def test_a_change_by_the_page_itself_is_outbound() -> None:
    own = {"field": "feed", "value": {**FEED_ADD["value"], "from": {"id": PAGE, "name": "Shop"}}}
    [event] = normalize_envelope(change_body(own))
    assert event.user_id == "" and event.direction == OUTBOUND
    assert event.comment.author_id == PAGE and event.comment.author_name == "Shop"


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        (CREATED_S, CREATED_S * 1000),
        (str(CREATED_S), CREATED_S * 1000),
        (float(CREATED_S), CREATED_S * 1000),
        ("2026-05-07T14:10:45+0000", 1778163045000),
        ("2026-05-07T14:10:45Z", 1778163045000),
        ("2026-05-07T14:10:45", 1778163045000),  # no offset: Graph's times are UTC
        ("2026-05-07T16:10:45+02:00", 1778163045000),
        ("yesterday", 1778163045612),  # unusable: the entry's time
        (None, 1778163045612),
        ([1], 1778163045612),
        ("0001-01-01T00:00:00+0000", 1778163045612),
    ],
)
def test_unsupported_change_time_is_created_time_else_the_entry_time(
    created: Any, expected: int
) -> None:
    change = {"field": "feed", "value": {"item": "status", "created_time": created}}
    [event] = normalize_envelope(change_body(change), received_at_ms=RECEIVED)
    assert event.timestamp_ms == expected


def test_change_without_any_time_takes_the_time_of_receipt() -> None:
    [event] = normalize_envelope(change_body({"field": "feed"}, time=None), received_at_ms=RECEIVED)
    assert event.timestamp_ms == RECEIVED


@pytest.mark.parametrize(
    ("change", "kind", "user"),
    [
        ({}, "unknown", ""),
        ({"value": {"from": {"id": COMMENTER}}}, "unknown", COMMENTER),
        ({"field": None, "value": "x"}, "unknown", ""),
        ({"field": 7, "value": [1]}, "unknown", ""),
        ({"field": "", "value": None}, "unknown", ""),
        ({"field": "f\x00eed"}, "f\ufffdeed", ""),
        ({"field": "x" * 300}, "x" * contract.MAX_KIND, ""),
        ({"field": "feed", "value": {"from": "someone"}}, "feed", ""),
        ({"field": "feed", "value": {"from": {"id": 6183920457712836}}}, "feed", COMMENTER),
        ({"field": "feed", "value": {"from": {"id": "7" * 129}}}, "feed", ""),
        ({"field": "feed", "value": {"from": {"id": ["x"]}}}, "feed", ""),
    ],
)
def test_odd_change_items_are_kept_raw(change: dict[str, Any], kind: str, user: str) -> None:
    [event] = normalize_envelope(change_body(change), received_at_ms=RECEIVED)
    assert event.unsupported.kind == kind
    assert event.user_id == ""  # the page's event; `user` is only the raw item's author
    assert user == "" or user in event.raw_json
    assert json.loads(event.raw_json) == change
    assert event.id.startswith(kind + ":") and len(event.id) <= contract.MAX_EVENT_ID
    assert contract.unstorable(event) is None
    events_pb2.Event.FromString(event.SerializeToString())


# ---------------------------------------------------------------- the event contract

LONG_MID = "m_" + "x" * contract.MAX_MID  # one character more than a mid may have
OVERLONG_MID_ITEMS: dict[str, dict[str, Any]] = {
    "delivery": {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "delivery": {"mids": ["m_ok", LONG_MID], "watermark": 1778163045000},
    },
    "read": {
        "sender": {"id": IG_USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "read": {"mid": LONG_MID},
    },
    "reaction": {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "reaction": {"mid": LONG_MID, "action": "react", "reaction": "love", "emoji": "❤"},
    },
    "edit": {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "message_edit": {"mid": LONG_MID, "text": "fixed", "num_edit": 1},
    },
    "message": {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "message": {"mid": "m_reply", "text": "yes", "reply_to": {"mid": LONG_MID}},
    },
    "postback": {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "postback": {"mid": LONG_MID, "title": "Start", "payload": "GET_STARTED"},
    },
}


@pytest.mark.parametrize("kind", list(OVERLONG_MID_ITEMS))
def test_an_overlong_mid_is_demoted_and_kept_raw(kind: str) -> None:
    item = OVERLONG_MID_ITEMS[kind]
    told: list[tuple[str | None, str]] = []
    [event] = normalize_envelope(
        envelope("page", entry(item)),
        received_at_ms=RECEIVED,
        on_demoted=lambda e, reason: told.append((e.WhichOneof("kind"), reason)),
    )
    assert event.WhichOneof("kind") == "unsupported"
    assert event.unsupported.kind == f"{kind}:invalid"
    assert json.loads(event.raw_json) == item
    assert event.page_id == PAGE and event.user_id == item["sender"]["id"]
    assert event.timestamp_ms == 1778163045000
    assert contract.unstorable(event) is None
    assert len(event.id) <= contract.MAX_EVENT_ID
    [(told_kind, reason)] = told
    assert told_kind == kind
    assert f"longer than {contract.MAX_MID}" in reason and LONG_MID not in reason
    # The same item redelivered keeps its id.
    [again] = normalize_envelope(envelope("page", entry(copy.deepcopy(item))))
    assert again.id == event.id


def test_a_mid_at_the_limit_is_kept() -> None:
    mid = "m_" + "x" * (contract.MAX_MID - 2)
    item = {**OVERLONG_MID_ITEMS["reaction"], "reaction": {"mid": mid, "action": "react"}}
    [event] = normalize_envelope(envelope("page", entry(item)))
    assert event.reaction.mid == mid


def test_event_ids_fit_the_contract_even_for_a_long_message_mid() -> None:
    mid = "m_" + "x" * 700  # longer than an event id may be
    item = {"sender": {"id": USER}, "recipient": {"id": PAGE}, "message": {"mid": mid}}
    deleted = {**item, "message": {"mid": "m_" + "x" * 506, "is_deleted": True}}
    for one_item in (item, deleted):
        [event] = normalize_envelope(envelope("page", entry(one_item)))
        assert event.unsupported.kind == "message:invalid"
        assert event.id.startswith("message:") and len(event.id) <= contract.MAX_EVENT_ID
        assert contract.unstorable(event) is None


def test_overlong_app_ids_read_as_absent_and_the_item_stays_what_it_is() -> None:
    echo = {
        "sender": {"id": PAGE},
        "recipient": {"id": USER},
        "timestamp": 1778163045000,
        "message": {"mid": "m_echo", "is_echo": True, "app_id": 10**70, "text": "ok"},
    }
    handover = {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "pass_thread_control": {"new_owner_app_id": "9" * 65, "previous_owner_app_id": "1"},
    }
    message, passed = normalize_envelope(envelope("page", entry(echo, handover)))
    assert message.message.text == "ok" and message.message.app_id == ""
    assert passed.handover.new_owner_app_id == "" and passed.handover.previous_owner_app_id == "1"


def test_overlong_reaction_fields_are_demoted() -> None:
    item = {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "reaction": {"mid": "m_1", "action": "react", "emoji": "🙂" * 65},
    }
    [event] = normalize_envelope(envelope("page", entry(item)))
    assert event.unsupported.kind == "reaction:invalid"
