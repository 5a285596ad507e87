"""Fencing: a batch whose locks expired while it stalled cannot overwrite a newer holder."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from pagewire.proto import router_pb2
from services.router.keys import lock_name
from services.router.planner import Key
from services.router.store import Conversation, Message
from tests.support.routerharness import PAGE, RouterHarness, event, router_harness
from tests.support.waiting import wait_for


async def test_stalled_holder_is_fenced_off(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    fences: list[int] = []
    redis = aioredis.from_url(redis_url)
    box: dict[str, RouterHarness] = {}

    async def stall_first_holder(keys: list[Key], fence: int) -> None:
        if not keys:
            return
        fences.append(fence)
        if len(fences) != 1:
            return
        harness = box["h"]
        # The first holder stalls here (think SIGSTOP) until its lock has expired and a
        # newer holder has written the conversation. Deleting the key is the expiry.
        (key,) = keys
        lock_key = f"{redis_prefix}:lock:{{{lock_name(key)}}}"
        assert await redis.delete(lock_key) == 1
        newer = event("message", "m_newer", 2000, text="written by the newer holder")
        await harness.stub.Ingest(router_pb2.IngestRequest(events=[newer]))

        async def newer_applied() -> bool:
            return await harness.count(Message) == 1

        # The other apply worker applies it meanwhile, under a newer fence.
        await wait_for(newer_applied, what="the newer holder's write")

    async with router_harness(
        database_url, redis_url, redis_prefix, before_write=stall_first_holder
    ) as harness:
        box["h"] = harness
        harness.subscriptions.connect(PAGE, "acme")
        stalled = event("message", "m_stalled", 1000, text="from the stalled holder")
        reply = await harness.ingest(router_pb2.IngestRequest(events=[stalled]))

        assert reply.stored == 1
        assert harness.stale_writes == 1
        # Three lock holds: the stalled one, the newer one, and the stalled one's retry.
        assert len(fences) == 3 and fences == sorted(fences)
        async with harness.sessions() as session:
            (conversation,) = (await session.execute(Conversation.__table__.select())).all()
        assert conversation.fence == fences[-1]
        assert await harness.count(Message) == 2
    await redis.aclose()


async def test_fences_survive_a_redis_restart(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    seen: list[int] = []

    async def record(keys: list[Key], fence: int) -> None:
        if keys:
            seen.append(fence)

    async with router_harness(database_url, redis_url, redis_prefix, before_write=record) as h:
        h.subscriptions.connect(PAGE, "acme")
        await h.ingest(router_pb2.IngestRequest(events=[event("message", "m_1", 1000)]))
        # An empty Redis after a restart: every key of this run is gone.
        redis = aioredis.from_url(redis_url)
        keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await h.ingest(router_pb2.IngestRequest(events=[event("message", "m_2", 2000)]))
    assert len(seen) == 2 and seen[1] > seen[0]


async def test_waiters_are_served_while_the_lock_is_renewed(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """A hold longer than the TTL keeps its lock (renewal), so no write is fenced off."""
    release = asyncio.Event()
    first = True

    async def hold_long(keys: list[Key], fence: int) -> None:
        nonlocal first
        if first and keys:
            first = False
            await asyncio.wait_for(release.wait(), 5)

    async with router_harness(
        database_url, redis_url, redis_prefix, ttl_ms=300, wait_ms=5000, before_write=hold_long
    ) as h:
        h.subscriptions.connect(PAGE, "acme")
        await h.stub.Ingest(router_pb2.IngestRequest(events=[event("message", "m_slow", 1000)]))
        await wait_for(lambda: h.router.applier.in_flight == 1, what="the first holder")
        await h.stub.Ingest(router_pb2.IngestRequest(events=[event("message", "m_wait", 2000)]))
        # Three TTLs pass while the first holder works; renewal keeps every other batch
        # out of the conversation, so nothing of it is visible yet.
        deadline = asyncio.get_running_loop().time() + 1.0
        while asyncio.get_running_loop().time() < deadline:
            assert await h.count(Message) == 0
            await asyncio.sleep(0.05)  # sampling a window, not a synchronisation
        release.set()
        await h.settled()
        assert h.stale_writes == 0
        assert await h.count(Message) == 2
