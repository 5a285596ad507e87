"""The router's page table: a disconnect parks a page's events on every replica, older
notices change nothing, and a purge is not undone by a cached answer or by an append that
committed while it ran."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from pagewire.proto import events_pb2, router_pb2
from services.router.store import Conversation, EventLog, Message
from services.router.store import purge as store_purge
from tests.support.routerharness import PAGE, USER, RouterHarness, router_harness

FB = events_pb2.FACEBOOK


@pytest.fixture
async def harness(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    async with router_harness(database_url, redis_url, redis_prefix) as running:
        yield running


def message(mid: str, ts: int, *, user: str = USER) -> router_pb2.IngestRequest:
    return router_pb2.IngestRequest(
        events=[
            events_pb2.Event(
                id=mid,
                platform=FB,
                page_id=PAGE,
                user_id=user,
                direction=events_pb2.INBOUND,
                timestamp_ms=ts,
                raw_json="{}",
                message=events_pb2.MessageEvent(mid=mid, text="hello"),
            )
        ]
    )


async def states(harness: RouterHarness) -> dict[str, str]:
    """Each log entry's state, by event id."""
    async with harness.sessions() as session:
        rows = await session.execute(select(EventLog.event_id, EventLog.state))
        return dict(rows.tuples().all())


async def accounts(harness: RouterHarness) -> list[str]:
    async with harness.sessions() as session:
        return list((await session.execute(select(Conversation.account_id))).scalars())


def connected(account: str, version: int) -> router_pb2.RouteParkedRequest:
    return router_pb2.RouteParkedRequest(
        platform=FB, page_id=PAGE, account_id=account, version=version
    )


def disconnected(version: int) -> router_pb2.PageDisconnectedRequest:
    return router_pb2.PageDisconnectedRequest(platform=FB, page_id=PAGE, version=version)


async def test_a_disconnected_page_has_its_events_parked_until_connected_again(
    harness: RouterHarness,
) -> None:
    harness.subscriptions.connect(PAGE, "acme")
    await harness.stub.RouteParked(connected("acme", 1))
    await harness.ingest(message("m_before", 1000))
    assert (await harness.stub.PageDisconnected(disconnected(2))).applied
    # Subscriptions (and this replica's cache of it) still saying "acme" changes nothing:
    # the router's own row says the page is not connected.
    await harness.ingest(message("m_after", 2000))
    assert await states(harness) == {"m_before": "applied", "m_after": "parked"}
    assert await harness.count(Message) == 1
    routed = await harness.stub.RouteParked(connected("acme", 3))
    assert routed.routed == 1
    await harness.settled()
    assert await states(harness) == {"m_before": "applied", "m_after": "applied"}


async def test_an_older_notice_changes_nothing(harness: RouterHarness) -> None:
    """A retried notice arriving after a newer one (subscriptions numbers them)."""
    await harness.stub.RouteParked(connected("acme", 5))
    await harness.ingest(message("m_1", 1000))
    assert not (await harness.stub.PageDisconnected(disconnected(4))).applied
    stale = await harness.stub.RouteParked(connected("globex", 3))
    assert (stale.routed, stale.moved_conversations) == (0, 0)
    await harness.ingest(message("m_2", 2000, user="other"))
    assert await states(harness) == {"m_1": "applied", "m_2": "applied"}
    assert sorted(await accounts(harness)) == ["acme", "acme"]
    # The same version again (a retry whose answer was lost) is taken, harmlessly.
    assert (await harness.stub.RouteParked(connected("acme", 5))).moved_conversations == 0
    # A newer one is taken: the page and its conversations move.
    assert (await harness.stub.RouteParked(connected("globex", 6))).moved_conversations == 2
    assert sorted(await accounts(harness)) == ["globex", "globex"]


async def test_a_purged_page_is_not_brought_back_by_a_cached_answer(
    harness: RouterHarness,
) -> None:
    """Another replica (or this one) cached "connected to acme" before the purge: the
    purge leaves the page's row as not connected, so nothing learns it back."""
    harness.subscriptions.connect(PAGE, "acme")
    await harness.ingest(message("m_old", 1000))
    await harness.stub.PurgePage(router_pb2.PurgePageRequest(platform=FB, page_id=PAGE))
    # What a replica that did not serve the purge still has in its cache.
    harness.router.pages._directory.remember(FB, PAGE, "acme")  # type: ignore[attr-defined]
    await harness.ingest(message("m_new", int(time.time() * 1000) + 60_000))
    assert await states(harness) == {"m_new": "parked"}
    assert await harness.count(Message) == await harness.count(Conversation) == 0


async def test_an_append_committed_while_the_purge_ran_is_dropped(
    harness: RouterHarness,
) -> None:
    """The append checks the tombstone without waiting for the purge's transaction, and the
    purge's delete cannot see a row committed after it began: the apply stage, which reads
    the tombstone after the purge committed, drops the entry instead of keeping it."""
    if harness.sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite runs one writer at a time: the two cannot overlap")
    harness.subscriptions.connect(PAGE, "acme")
    await harness.ingest(message("m_old", 1000))
    async with harness.sessions() as session, session.begin():
        await store_purge.purge_page(session, "FACEBOOK", PAGE, int(time.time() * 1000))
        # Meta redelivers a body of the page while the purge is not committed yet.
        reply = await harness.stub.Ingest(message("m_racing", int(time.time() * 1000) - 5_000))
        assert reply.stored == 1
    await harness.settled()
    async with harness.sessions() as session:
        left = (
            await session.execute(
                select(func.count()).select_from(EventLog).where(EventLog.page_id == PAGE)
            )
        ).scalar_one()
    assert left == 0
    assert await harness.count(Message) == await harness.count(Conversation) == 0
