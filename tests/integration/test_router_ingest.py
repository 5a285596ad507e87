"""The router over real gRPC, PostgreSQL and Redis: the log's ACK, exactly-once storage,
parking, page moves and purges, and bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import func, select

from pagewire.proto import events_pb2, router_pb2, subscriptions_pb2
from services.router.mutex import RedisLocks, redis_client
from services.router.store import Contact, Conversation, EventLog, Message
from tests.support.routerharness import PAGE, USER, RouterHarness, router_harness
from tests.support.waiting import wait_for


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


async def count_state(harness: RouterHarness, state: str) -> int:
    async with harness.sessions() as session:
        return (
            await session.execute(
                select(func.count()).select_from(EventLog).where(EventLog.state == state)
            )
        ).scalar_one()


async def test_redelivered_events_are_stored_once(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    request = router_pb2.IngestRequest(
        events=[message("m_1", "Hola 🙂", 1000), message("m_2", "¿envío?", 2000)]
    )
    first = await harness.ingest(request)
    again = await harness.ingest(request)
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


async def test_ok_means_committed_in_the_log(harness: RouterHarness) -> None:
    """The ACK is the log's commit: every acknowledged event is a log row at that moment,
    before the apply stage has necessarily made it visible."""
    harness.subscriptions.connect(PAGE, "acme")
    events = [message(f"m_ack_{i}", "x", 1000 + i) for i in range(50)]
    reply = await harness.stub.Ingest(router_pb2.IngestRequest(events=events))
    assert reply.stored == 50
    assert await harness.count(EventLog) == 50  # read right after the OK, no waiting
    await harness.settled()
    assert await count_state(harness, "applied") == 50
    assert await harness.count(Message) == 50


async def test_messages_are_listed_in_meta_timestamp_order(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    for mid, ts in (("m_late", 3000), ("m_early", 1000), ("m_mid", 2000)):
        await harness.ingest(router_pb2.IngestRequest(events=[message(mid, mid, ts)]))
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
    await harness.ingest(router_pb2.IngestRequest(events=[base, reply, later, delivery]))
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=PAGE))
    status = {m.mid: router_pb2.MessageStatus.Name(m.status) for m in listed.messages}
    assert status == {"m_in": "RECEIVED", "m_out": "DELIVERED", "m_out2": "SENT"}
    await harness.ingest(router_pb2.IngestRequest(events=[read]))
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=PAGE))
    status = {m.mid: router_pb2.MessageStatus.Name(m.status) for m in listed.messages}
    assert status == {"m_in": "RECEIVED", "m_out": "READ", "m_out2": "SENT"}


async def test_unknown_page_is_parked_then_routed_when_connected(harness: RouterHarness) -> None:
    request = router_pb2.IngestRequest(events=[message("m_p1", "first", 1000)])
    appended = await harness.ingest(request)
    assert (appended.stored, appended.duplicates) == (1, 0)
    again = await harness.ingest(request)
    assert (again.stored, again.duplicates) == (0, 1)
    assert await count_state(harness, "parked") == 1
    activity = await harness.stub.GetPageActivity(
        router_pb2.GetPageActivityRequest(platform=events_pb2.FACEBOOK, page_id=PAGE)
    )
    assert activity.parked == 1
    assert await harness.count(Message) == 0

    harness.subscriptions.connect(PAGE, "acme")
    routed = await harness.stub.RouteParked(
        router_pb2.RouteParkedRequest(platform=events_pb2.FACEBOOK, page_id=PAGE, account_id="acme")
    )
    assert routed.routed == 1
    await harness.settled()
    assert await count_state(harness, "parked") == 0
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=PAGE))
    assert [m.text for m in listed.messages] == ["first"]
    # The same webhook redelivered after routing is a duplicate, not a second message.
    late = await harness.ingest(request)
    assert (late.stored, late.duplicates) == (0, 1)
    assert await harness.count(Message) == 1


async def test_parked_events_are_applied_when_their_page_is_connected_whatever_the_caller(
    harness: RouterHarness,
) -> None:
    """RouteParked never came (it failed, or timed out): the sweep finds the page connected."""
    await harness.ingest(router_pb2.IngestRequest(events=[message("m_sw", "swept", 1000)]))
    assert await count_state(harness, "parked") == 1
    harness.subscriptions.connect(PAGE, "acme")

    async def applied() -> bool:
        return await harness.count(Message) == 1

    await wait_for(applied, timeout=10, what="the parked sweep to apply the event")
    assert await count_state(harness, "parked") == 0


async def test_route_parked_needs_the_account(harness: RouterHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.RouteParked(
            router_pb2.RouteParkedRequest(platform=events_pb2.FACEBOOK, page_id=PAGE)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "account_id" in caught.value.details()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: setattr(e, "page_id", ""), "events[1].page_id"),
        (lambda e: setattr(e, "page_id", "9" * 129), "events[1].page_id"),
        (lambda e: setattr(e, "platform", events_pb2.PLATFORM_UNSPECIFIED), "events[1].platform"),
        (lambda e: setattr(e, "platform", 7), "events[1].platform"),
        (lambda e: setattr(e, "id", ""), "events[1].id"),
        (lambda e: setattr(e, "id", "x" * 513), "events[1].id"),
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


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: setattr(e, "user_id", ""),  # a message without its person
        lambda e: setattr(e, "user_id", "7" * 200),
        lambda e: setattr(e.message, "mid", "m" * 600),
        lambda e: setattr(e.message, "reply_to_mid", "m" * 600),
        lambda e: setattr(e.message, "text", "NUL \x00 inside"),
    ],
)
async def test_an_unstorable_item_is_kept_raw_never_refused(harness: RouterHarness, mutate) -> None:  # type: ignore[no-untyped-def]
    """Meta would redeliver a refused body for ever: such an item is kept as unsupported."""
    harness.subscriptions.connect(PAGE, "acme")
    good, odd = message("m_ok", "fine", 1000), message("m_odd", "odd", 2000)
    odd.raw_json = '{"message":{"mid":"m_odd"}}'
    mutate(odd)
    reply = await harness.ingest(router_pb2.IngestRequest(events=[good, odd]))
    assert reply.stored == 2
    listed = await harness.stub.ListEvents(router_pb2.ListEventsRequest(page_id=PAGE))
    kinds = {e.event_id: (e.kind, e.raw_json) for e in listed.events}
    assert kinds["m_odd"] == ("message:invalid", '{"message":{"mid":"m_odd"}}')
    assert await harness.count(Message) == 1


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
    replies = await asyncio.gather(*calls)
    assert sum(r.stored for r in replies) == 40
    await harness.settled()
    assert await harness.count(Message) == 40
    assert await harness.count(Conversation) == 1
    assert await harness.count(Contact) == 1


async def test_page_activity_and_purge(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    await harness.ingest(
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


async def test_a_purge_lasts_when_meta_redelivers(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    body = router_pb2.IngestRequest(events=[message("m_gone", "forget me", 1000)])
    await harness.ingest(body)
    await harness.stub.PurgePage(
        router_pb2.PurgePageRequest(platform=events_pb2.FACEBOOK, page_id=PAGE)
    )
    again = await harness.ingest(body)
    assert (again.stored, again.duplicates) == (0, 1)
    assert await harness.count(EventLog) == await harness.count(Message) == 0
    # New events of the page (connected again) are stored as usual.
    await harness.stub.RouteParked(
        router_pb2.RouteParkedRequest(platform=events_pb2.FACEBOOK, page_id=PAGE, account_id="acme")
    )
    now = int(time.time() * 1000)
    fresh = await harness.ingest(
        router_pb2.IngestRequest(events=[message("m_new", "hello again", now)])
    )
    assert fresh.stored == 1
    assert await harness.count(Message) == 1


async def test_a_busy_conversation_is_left_pending_then_applied(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Another replica holds the conversation's lock: the OK does not wait for it, and the
    entry is applied once the lock is free (never twice, never by waiting on it)."""
    async with router_harness(database_url, redis_url, redis_prefix) as harness:
        harness.subscriptions.connect(PAGE, "acme")
        other_replica = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=10_000, wait_ms=0)
        name = f"facebook:{PAGE}:{USER}"
        token = await other_replica.acquire(name)
        try:
            reply = await harness.stub.Ingest(
                router_pb2.IngestRequest(events=[message("m_busy", "busy", 1000)])
            )
            assert reply.stored == 1
            # Several batches try while the lock is held; none applies it.
            await wait_for(
                lambda: harness.router.applier.in_flight == 0, what="an apply attempt to end"
            )
            assert await harness.count(Message) == 0
            assert await harness.pending() == 1
        finally:
            await other_replica.release(name, token)
            await other_replica.close()
        await harness.settled()
        assert await harness.count(Message) == 1


async def test_a_redelivery_of_duplicates_takes_no_lock(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    async with router_harness(database_url, redis_url, redis_prefix) as harness:
        harness.subscriptions.connect(PAGE, "acme")
        users = [f"u{i}" for i in range(200)]
        body = router_pb2.IngestRequest(
            events=[message(f"m_{u}", "hi", 1000, user=u) for u in users]
        )
        await harness.ingest(body)
        other_replica = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=10_000, wait_ms=0)
        held = await other_replica.try_many([f"facebook:{PAGE}:{u}" for u in users], 1 << 60)
        try:
            started = time.monotonic()
            again = await harness.stub.Ingest(body, timeout=4)
            assert (again.stored, again.duplicates) == (0, 200)
            assert time.monotonic() - started < 1.0
            assert await harness.pending() == 0
        finally:
            await other_replica.release_many(held)
            await other_replica.close()


async def test_a_page_needing_reauthorization_still_stores_events(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme", status=subscriptions_pb2.REAUTH_REQUIRED)
    reply = await harness.ingest(
        router_pb2.IngestRequest(events=[message("m_reauth", "still here", 1000)])
    )
    assert reply.stored == 1
    assert await count_state(harness, "parked") == 0
    assert await harness.count(Message) == 1


async def test_subscriptions_down_does_not_stop_a_known_page(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    await harness.ingest(router_pb2.IngestRequest(events=[message("m_up", "up", 1000)]))
    harness.subscriptions.down = True
    harness.router.pages._directory.forget(events_pb2.FACEBOOK, PAGE)  # type: ignore[attr-defined]
    await harness.ingest(router_pb2.IngestRequest(events=[message("m_down", "down", 2000)]))
    assert await harness.count(Message) == 2


async def test_a_moved_page_takes_its_conversations_along(harness: RouterHarness) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    await harness.ingest(router_pb2.IngestRequest(events=[message("m_old", "before", 1000)]))
    harness.subscriptions.connect(PAGE, "globex")
    moved = await harness.stub.RouteParked(
        router_pb2.RouteParkedRequest(
            platform=events_pb2.FACEBOOK, page_id=PAGE, account_id="globex"
        )
    )
    assert moved.moved_conversations == 1
    await harness.ingest(
        router_pb2.IngestRequest(events=[message("m_new", "after", 2000, user="other")])
    )
    for account, count in (("acme", 0), ("globex", 2)):
        listed = await harness.stub.ListConversations(
            router_pb2.ListConversationsRequest(account_id=account)
        )
        assert len(listed.conversations) == count


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
    reply = await harness.ingest(router_pb2.IngestRequest(events=[item]))
    assert reply.stored == 1
    listed = await harness.stub.ListEvents(router_pb2.ListEventsRequest(page_id=PAGE))
    assert [(e.kind, e.raw_json) for e in listed.events] == [
        ("game_play", '{"game_play":{"game_id":"1"}}')
    ]


async def test_a_claimed_batch_of_a_dead_replica_is_applied_after_its_lease(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    from services.router.apply import ApplySettings
    from services.router.store import log as store_log

    async with router_harness(
        database_url, redis_url, redis_prefix, apply=ApplySettings(lease_ms=1500, idle_poll_s=0.05)
    ) as harness:
        harness.subscriptions.connect(PAGE, "acme")
        await harness.router.applier.stop()  # this replica's workers are gone for now
        await harness.stub.Ingest(router_pb2.IngestRequest(events=[message("m_orphan", "x", 1000)]))
        # A replica claims the entry and dies before applying it.
        async with harness.sessions() as session, session.begin():
            (claimed,) = await store_log.claim(session, 10, int(time.time() * 1000), 1500)
        harness.router.applier._stopping = False  # type: ignore[attr-defined]
        harness.router.applier.start()
        assert await harness.count(Message) == 0
        await harness.settled()
        assert await harness.count(Message) == 1
        assert claimed.row_id > 0


async def test_concurrent_appends_of_the_same_ids_in_other_orders_never_deadlock(
    harness: RouterHarness,
) -> None:
    # Meta redelivers: commits on two replicas carry the same ids in any order. Each
    # append inserts in key order, so none waits on another in a cycle (40P01).
    from services.router.store import log as event_log

    def row(i: int) -> dict:  # type: ignore[type-arg]
        return {
            "platform": "FACEBOOK",
            "page_id": PAGE,
            "user_id": USER,
            "event_id": f"m_deadlock_{i:04d}",
            "kind": "message",
            "direction": "INBOUND",
            "timestamp_ms": 1778163000000 + i,
            "standby": False,
            "raw_json": "{}",
            "event": events_pb2.Event(id=f"m_deadlock_{i:04d}").SerializeToString(),
            "received_at_ms": 1,
            "trace_parent": "",
        }

    rows = [row(i) for i in range(200)]
    rng = __import__("random").Random(7)

    async def appender() -> set[tuple[str, str, str]]:
        shuffled = rng.sample(rows, len(rows))
        async with harness.sessions() as session, session.begin():
            new = await event_log.append(session, shuffled, now=1)
            # Not a wait for anything: the transaction stays open a moment, as a group
            # commit's does, so the appends overlap (without it this cannot deadlock even
            # unsorted, and the test could not fail).
            await asyncio.sleep(0.01)
            return new

    for _ in range(5):
        results = await asyncio.gather(*(appender() for _ in range(6)))
        # Every round ends with each id once: the first round appends them, later ones none.
        assert sum(len(new) for new in results) in (0, len(rows))
    async with harness.sessions() as session:
        stored = (
            await session.execute(
                select(func.count(func.distinct(EventLog.event_id)), func.count()).where(
                    EventLog.event_id.like("m_deadlock_%")
                )
            )
        ).one()
    assert tuple(stored) == (len(rows), len(rows))
