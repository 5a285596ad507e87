"""Every Meta fixture, through normalization and the router, ends in the expected stored state.

Applied in file order and in reverse order: both end in the same state (guarantee 4).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pagewire.normalize import normalize_envelope
from pagewire.proto import events_pb2, router_pb2
from services.router.store import EventLog, MessageEdit, Reaction
from tests.support.routerharness import RouterHarness, router_harness

SHOES, DINER, INSTA = "109384756201938", "117465829304716", "17841405822304914"
VALENTINA = "7294015836620194"
ECHO_MID = (
    "m_xwxX6-ACejreu1zyKuYg2QFUdWuPlvahre162DiZZehVvxQFdH_ZP13XsYqWGObRxsrpdV4FiqcosfWpVwn3Fd"
)
FIRST_MID = (
    "m_Dq8DMOAoUZJrXuusle2-z5zBU6wJHtdhSDR7BNMJq7EnKyEc-37nq1Ie82QIV33LY3f7ohJ-ilpzSDfiyib59O"
)


@pytest.fixture
async def harness(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    async with router_harness(database_url, redis_url, redis_prefix) as running:
        running.subscriptions.connect(SHOES, "acme")
        running.subscriptions.connect(DINER, "acme")
        running.subscriptions.connect(INSTA, "acme", events_pb2.INSTAGRAM)
        yield running


def fixture_events(fixtures_dir: Path) -> list[list[events_pb2.Event]]:
    files = sorted(p for p in (fixtures_dir / "meta").glob("[0-9]*.json"))
    return [normalize_envelope(json.loads(p.read_bytes())) for p in files]


async def messages(harness: RouterHarness, page: str, user: str = "") -> dict[str, object]:
    reply = await harness.stub.ListMessages(
        router_pb2.ListMessagesRequest(page_id=page, user_id=user, page_size=1000)
    )
    return {m.mid: m for m in reply.messages}


async def snapshot(harness: RouterHarness) -> dict[str, object]:
    """Everything a reader can see, without the router's own row ids."""
    state: dict[str, object] = {}
    for page in (SHOES, DINER, INSTA):
        listed = await harness.stub.ListMessages(
            router_pb2.ListMessagesRequest(page_id=page, page_size=1000)
        )
        for m in listed.messages:
            m.ClearField("id")
            m.ClearField("conversation_id")
        state[f"messages:{page}"] = [
            m.SerializeToString(deterministic=True) for m in listed.messages
        ]
        conversations = await harness.stub.ListConversations(
            router_pb2.ListConversationsRequest(page_id=page, page_size=1000)
        )
        for c in conversations.conversations:
            c.ClearField("id")
            c.ClearField("created_at_ms")
        state[f"conversations:{page}"] = sorted(
            c.SerializeToString(deterministic=True) for c in conversations.conversations
        )
        events = await harness.stub.ListEvents(
            router_pb2.ListEventsRequest(page_id=page, page_size=1000)
        )
        state[f"events:{page}"] = sorted((e.event_id, e.kind) for e in events.events)
    return state


async def test_every_fixture_stores_the_expected_state(
    harness: RouterHarness, fixtures_dir: Path
) -> None:
    for events in fixture_events(fixtures_dir):
        if events:
            await harness.ingest(router_pb2.IngestRequest(events=events))

    shoes = await messages(harness, SHOES, VALENTINA)
    first = shoes[FIRST_MID]
    # 01 then 14: the edit replaced the text and kept the original and the history.
    assert first.text == "Hola, ¿tienen envío a Bogotá?"
    assert first.original_text == "Hola, ¿tienen envío a Medellín? 🙂"
    assert [(e.num_edit, e.text) for e in first.edits] == [(1, "Hola, ¿tienen envío a Bogotá?")]
    assert (first.direction, first.status) == (events_pb2.INBOUND, router_pb2.RECEIVED)
    # 03 echo from our app, delivered (05) and read (06); 08 reacted then unreacted.
    echo = shoes[ECHO_MID]
    assert (echo.direction, echo.is_echo, echo.app_id) == (
        events_pb2.OUTBOUND,
        True,
        "1094728365019283",
    )
    assert echo.metadata == "outbox:3f9c2a7e-5b1d-4c8e-9a20-7d61e0b4c915"
    assert echo.status == router_pb2.READ
    assert list(echo.reactions) == []
    # 04 echo typed in the Page inbox: outgoing, no app id, after the read watermark.
    inbox = next(m for m in shoes.values() if m.text.startswith("Hi! This is Laura"))
    assert (inbox.direction, inbox.app_id, inbox.status) == (
        events_pb2.OUTBOUND,
        "",
        router_pb2.SENT,
    )
    # 11 standby message, flagged.
    standby = next(m for m in shoes.values() if m.text == "ok thanks Laura, I'll wait")
    assert standby.standby

    # 09 image and the sticker (its transition twin collapsed).
    second_user = await messages(harness, SHOES, "6183920457712836")
    kinds = [[a.type for a in m.attachments] for m in second_user.values()]
    assert [] in kinds and ["image"] in kinds and ["sticker"] in kinds
    sticker = next(
        m for m in second_user.values() if [a.type for a in m.attachments] == ["sticker"]
    )
    assert sticker.attachments[0].sticker_id == "369239263222822"

    diner = await messages(harness, DINER)
    postback = next(m for m in diner.values() if m.kind == "postback")
    assert (postback.text, postback.payload) == ("Track my order", "TRACK_ORDER:48213")
    refund = next(m for m in diner.values() if m.text == "Refund")
    assert refund.quick_reply_payload
    # 17 referral: an event of its conversation, not a message.
    referrals = await harness.stub.ListEvents(
        router_pb2.ListEventsRequest(page_id=DINER, kinds=["referral"])
    )
    assert [json.loads(e.raw_json)["referral"]["ref"] for e in referrals.events] == [
        "summer_coupon"
    ]

    insta = await messages(harness, INSTA)
    assert sorted((m.direction, m.is_echo) for m in insta.values()) == [
        (events_pb2.INBOUND, False),
        (events_pb2.OUTBOUND, True),
    ]
    conversations = await harness.stub.ListConversations(
        router_pb2.ListConversationsRequest(page_id=INSTA)
    )
    assert len(conversations.conversations) == 1  # the IG echo joined the user's thread


async def test_reverse_order_converges(
    database_url: str,
    other_database_url: str,
    redis_url: str,
    redis_prefix: str,
    fixtures_dir: Path,
) -> None:
    batches = fixture_events(fixtures_dir)
    states = []
    # Each order in a database of its own: a purge leaves a tombstone that drops the same
    # events appended again, so it cannot reset a database for a second run.
    for url, order in ((database_url, batches), (other_database_url, list(reversed(batches)))):
        async with router_harness(url, redis_url, redis_prefix) as running:
            running.subscriptions.connect(SHOES, "acme")
            running.subscriptions.connect(DINER, "acme")
            running.subscriptions.connect(INSTA, "acme", events_pb2.INSTAGRAM)
            for events in order:
                for event in reversed(events) if order is not batches else events:
                    await running.ingest(router_pb2.IngestRequest(events=[event]))
            states.append(await snapshot(running))
            await _purge(running)
            # A purge leaves nothing of the pages behind.
            assert await running.count(EventLog) == 0
            assert await running.count(MessageEdit) == await running.count(Reaction) == 0
    assert states[0] == states[1]


async def _purge(harness: RouterHarness) -> None:
    for page, platform in ((SHOES, 1), (DINER, 1), (INSTA, 2)):
        await harness.stub.PurgePage(router_pb2.PurgePageRequest(platform=platform, page_id=page))


async def test_read_watermark_in_ms_marks_only_that_conversation(harness: RouterHarness) -> None:
    from tests.support.routerharness import event

    other = "7000000000000002"
    echoes = [
        event("echo", f"m_{user}_{ts}", ts, user=user, text=f"reply {ts}")
        for user in (VALENTINA, other)
        for ts in (1778163000000, 1778163001000, 1778163002000)
    ]
    await harness.ingest(router_pb2.IngestRequest(events=echoes))
    read = event("read", "read:ms", 1778163001500, watermark_ms=1778163001000)
    await harness.ingest(router_pb2.IngestRequest(events=[read]))
    status = {
        mid: router_pb2.MessageStatus.Name(m.status)
        for mid, m in (await messages(harness, SHOES)).items()
    }
    assert status == {
        f"m_{VALENTINA}_1778163000000": "READ",
        f"m_{VALENTINA}_1778163001000": "READ",
        f"m_{VALENTINA}_1778163002000": "SENT",
        f"m_{other}_1778163000000": "SENT",
        f"m_{other}_1778163001000": "SENT",
        f"m_{other}_1778163002000": "SENT",
    }
