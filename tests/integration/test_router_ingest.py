"""The router over real gRPC, PostgreSQL and Redis: exactly-once storage, parking, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from pagewire.proto import events_pb2, router_pb2
from services.router.mutex import RedisLocks, redis_client
from services.router.store import Contact, Conversation, EventLog, Message, ParkedEvent
from tests.support.routerharness import PAGE, USER, RouterHarness, router_harness


@pytest.fixture
async def harness(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    async with router_harness(database_url, redis_url, redis_prefix) as running:
        yield running


def message(mid: str, text: str, ts: int, *, user: str = USER, echo: bool = False):  # type: ignore[no-untyped-def]
    return events_pb2.Event(
        id=mid,
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        user_id=user,
        direction=events_pb2.OUTBOUND if echo else events_pb2.INBOUND,
        timestamp_ms=ts,
        raw_json="{}",
        message=events_pb2.MessageEvent(mid=mid, text=text, is_echo=echo),
    )


async def test_redelivered_events_are_stored_once(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    request = router_pb2.IngestRequest(
        events=[message("m_1", "Hola 🙂", 1000), message("m_2", "¿envío?", 2000)]
    )
    first = await harness.stub.Ingest(request)
    again = await harness.stub.Ingest(request)
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (0, 2)
    assert await harness.count(Message) == 2
    assert await harness.count(Conversation) == 1
    assert await harness.count(Contact) == 1
    listed = await harness.stub.ListMessages(
        router_pb2.ListMessagesRequest(page_id=PAGE, user_id=USER)
    )
    assert [(m.mid, m.text) for m in listed.messages] == [("m_1", "Hola 🙂"), ("m_2", "¿envío?")]
    conversations = await harness.stub.ListConversations(
        router_pb2.ListConversationsRequest(account_id="acme")
    )
    assert [(c.page_id, c.user_id, c.message_count) for c in conversations.conversations] == [
        (PAGE, USER, 2)
    ]


async def test_messages_are_listed_in_meta_timestamp_order(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    for mid, ts in (("m_late", 3000), ("m_early", 1000), ("m_mid", 2000)):
        await harness.stub.Ingest(router_pb2.IngestRequest(events=[message(mid, mid, ts)]))
    listed = await harness.stub.ListMessages(
        router_pb2.ListMessagesRequest(page_id=PAGE, user_id=USER)
    )
    assert [m.mid for m in listed.messages] == ["m_early", "m_mid", "m_late"]


async def test_watermarks_mark_outgoing_messages(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    base = message("m_in", "hi", 1000)
    reply = message("m_out", "hello", 2000, echo=True)
    later = message("m_out2", "anything else?", 5000, echo=True)
    delivery = events_pb2.Event(
        id="delivery:1",
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        user_id=USER,
        direction=events_pb2.INBOUND,
        timestamp_ms=3000,
        delivery=events_pb2.DeliveryEvent(watermark_ms=3000),
    )
    read = events_pb2.Event(
        id="read:1",
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        user_id=USER,
        direction=events_pb2.INBOUND,
        timestamp_ms=2500,
        read=events_pb2.ReadEvent(watermark_ms=2500),
    )
    await harness.stub.Ingest(router_pb2.IngestRequest(events=[base, reply, later, delivery]))
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=PAGE))
    status = {m.mid: router_pb2.MessageStatus.Name(m.status) for m in listed.messages}
    assert status == {"m_in": "RECEIVED", "m_out": "DELIVERED", "m_out2": "SENT"}
    await harness.stub.Ingest(router_pb2.IngestRequest(events=[read]))
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=PAGE))
    status = {m.mid: router_pb2.MessageStatus.Name(m.status) for m in listed.messages}
    assert status == {"m_in": "RECEIVED", "m_out": "READ", "m_out2": "SENT"}


async def test_unknown_page_is_parked_then_routed_when_connected(harness: RouterHarness) -> None:
    request = router_pb2.IngestRequest(events=[message("m_p1", "first", 1000)])
    parked = await harness.stub.Ingest(request)
    assert (parked.stored, parked.parked) == (0, 1)
    again = await harness.stub.Ingest(request)
    assert (again.parked, again.duplicates) == (0, 1)
    assert await harness.count(ParkedEvent) == 1
    assert await harness.count(Message) == 0

    harness.subscriptions.connect(PAGE, "acme")
    routed = await harness.stub.RouteParked(
        router_pb2.RouteParkedRequest(platform=events_pb2.FACEBOOK, page_id=PAGE)
    )
    assert routed.routed == 1
    assert await harness.count(ParkedEvent) == 0
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=PAGE))
    assert [m.text for m in listed.messages] == ["first"]
    # The same webhook redelivered after routing is a duplicate, not a second message.
    late = await harness.stub.Ingest(request)
    assert (late.stored, late.duplicates) == (0, 1)
    assert await harness.count(Message) == 1


async def test_route_parked_for_unconnected_page_is_refused(harness: RouterHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.RouteParked(
            router_pb2.RouteParkedRequest(platform=events_pb2.FACEBOOK, page_id=PAGE)
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: setattr(e, "page_id", ""), "events[1].page_id"),
        (lambda e: setattr(e, "platform", events_pb2.PLATFORM_UNSPECIFIED), "events[1].platform"),
        (lambda e: setattr(e, "platform", 7), "events[1].platform"),
        (lambda e: setattr(e, "id", ""), "events[1].id"),
        (lambda e: setattr(e, "user_id", ""), "events[1].user_id"),
        (lambda e: e.ClearField("message"), "events[1].kind"),
    ],
)
async def test_bad_input_is_rejected_and_stores_nothing(
    harness: RouterHarness, mutate, field: str
) -> None:  # type: ignore[no-untyped-def]
    harness.subscriptions.connect(PAGE, "acme")
    good, bad = message("m_ok", "fine", 1000), message("m_bad", "bad", 2000)
    mutate(bad)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.Ingest(router_pb2.IngestRequest(events=[good, bad]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()
    assert await harness.count(EventLog) == 0
    assert await harness.count(Message) == 0


async def test_empty_ingest_is_invalid(harness: RouterHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.Ingest(router_pb2.IngestRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_posts_into_one_new_conversation(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    events = [message(f"m_{i}", f"text {i}", 1000 + i) for i in range(40)]
    # Each POST carries a window of events overlapping the next, as Meta's retries would.
    calls = [
        harness.stub.Ingest(router_pb2.IngestRequest(events=events[i : i + 5]))
        for i in range(0, 40, 2)
    ]
    await asyncio.gather(*calls)
    assert await harness.count(Message) == 40
    assert await harness.count(Conversation) == 1
    assert await harness.count(Contact) == 1


async def test_page_activity_and_purge(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    await harness.stub.Ingest(
        router_pb2.IngestRequest(events=[message("m_a", "a", 1000), message("m_b", "b", 2000)])
    )
    page = dict(platform=events_pb2.FACEBOOK, page_id=PAGE)
    activity = await harness.stub.GetPageActivity(router_pb2.GetPageActivityRequest(**page))
    assert (activity.last_event_ms, activity.conversations, activity.messages) == (2000, 1, 2)
    purged = await harness.stub.PurgePage(router_pb2.PurgePageRequest(**page))
    assert (purged.conversations, purged.messages) == (1, 2)
    for model in (Message, Conversation, Contact, EventLog):
        assert await harness.count(model) == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.PurgePage(router_pb2.PurgePageRequest(page_id="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_lock_wait_exceeded_is_aborted_and_stores_nothing(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    async with router_harness(database_url, redis_url, redis_prefix, wait_ms=200) as harness:
        harness.subscriptions.connect(PAGE, "acme")
        other_replica = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=10_000, wait_ms=0)
        token = await other_replica.acquire(f"facebook:{PAGE}:{USER}")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await harness.stub.Ingest(
                    router_pb2.IngestRequest(events=[message("m_busy", "busy", 1000)])
                )
            assert caught.value.code() == grpc.StatusCode.ABORTED
            assert await harness.count(Message) == 0
        finally:
            await other_replica.release(f"facebook:{PAGE}:{USER}", token)
            await other_replica.close()


async def test_a_page_needing_reauthorization_still_stores_events(harness: RouterHarness) -> None:
    from pagewire.proto import subscriptions_pb2

    harness.subscriptions.connect(PAGE, "acme", status=subscriptions_pb2.REAUTH_REQUIRED)
    reply = await harness.stub.Ingest(
        router_pb2.IngestRequest(events=[message("m_reauth", "still here", 1000)])
    )
    assert (reply.stored, reply.parked) == (1, 0)
    assert await harness.count(Message) == 1


async def test_unknown_kinds_are_stored_raw_not_refused(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    item = events_pb2.Event(
        id="game_play:1",
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        user_id=USER,
        direction=events_pb2.INBOUND,
        timestamp_ms=1000,
        raw_json='{"game_play":{"game_id":"1"}}',
        unsupported=events_pb2.UnsupportedEvent(kind="game_play"),
    )
    reply = await harness.stub.Ingest(router_pb2.IngestRequest(events=[item]))
    assert reply.stored == 1
    listed = await harness.stub.ListEvents(router_pb2.ListEventsRequest(page_id=PAGE))
    assert [(e.kind, e.raw_json) for e in listed.events] == [
        ("game_play", '{"game_play":{"game_id":"1"}}')
    ]
