"""The conversation lock on a real Redis: exclusion, wake-on-release, bounded wait, expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pagewire.kit.errors import Aborted
from services.router.mutex import LocalLocks, RedisLocks, redis_client
from tests.support.waiting import wait_for


@pytest.fixture
async def locks(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisLocks]:
    mutex = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=10_000, wait_ms=5_000)
    yield mutex
    await mutex.close()


async def test_keys_share_a_hash_tag(locks: RedisLocks, redis_prefix: str) -> None:
    lock, wake = locks.keys_for("facebook:1:2")
    assert lock == f"{redis_prefix}:lock:{{facebook:1:2}}"
    assert wake == lock + ":wake"


async def test_only_one_holder_at_a_time(locks: RedisLocks) -> None:
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        async with locks.hold("facebook:p:u"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)  # yield so another worker could run if exclusion failed
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(20)))
    assert most == 1


def _more_blocked(probe, baseline: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await probe.info("clients"))["blocked_clients"] > baseline

    return check


async def test_waiter_is_woken_by_release_not_by_expiry(locks: RedisLocks, redis_url: str) -> None:
    probe = redis_client(redis_url)
    blocked = (await probe.info("clients"))["blocked_clients"]
    token = await locks.acquire("facebook:p:wake")
    waiter = asyncio.create_task(locks.acquire("facebook:p:wake"))
    # Wait until the waiter is parked in BLPOP, so what follows exercises the wake-up path.
    await wait_for(_more_blocked(probe, blocked), what="the waiter to block on the wake-up list")
    await probe.aclose()
    assert not waiter.done()
    released_at = time.monotonic()
    assert await locks.release("facebook:p:wake", token)
    second = await asyncio.wait_for(waiter, 2)
    # The TTL is 10 s: getting the lock within a fraction of a second means the release woke it.
    assert time.monotonic() - released_at < 1.0
    assert await locks.release("facebook:p:wake", second)


async def test_wait_is_bounded(redis_url: str, redis_prefix: str) -> None:
    mutex = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=10_000, wait_ms=200)
    try:
        token = await mutex.acquire("facebook:p:busy")
        started = time.monotonic()
        with pytest.raises(Aborted):
            await mutex.acquire("facebook:p:busy")
        assert time.monotonic() - started < 2.0
        await mutex.release("facebook:p:busy", token)
    finally:
        await mutex.close()


async def test_a_crashed_holders_lock_expires(redis_url: str, redis_prefix: str) -> None:
    mutex = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=300, wait_ms=5_000)
    try:
        await mutex.acquire("facebook:p:crash")  # never released, as if the holder died
        started = time.monotonic()
        token = await mutex.acquire("facebook:p:crash")
        assert time.monotonic() - started < 2.0
        await mutex.release("facebook:p:crash", token)
    finally:
        await mutex.close()


async def test_a_stale_token_cannot_release_a_newer_holder(locks: RedisLocks) -> None:
    token = await locks.acquire("facebook:p:stale")
    assert await locks.release("facebook:p:stale", token)
    newer = await locks.acquire("facebook:p:stale")
    assert not await locks.release("facebook:p:stale", token)
    assert await locks.release("facebook:p:stale", newer)


async def test_local_lock_wait_is_bounded() -> None:
    mutex = LocalLocks(wait_ms=100)
    async with mutex.hold("k"):
        with pytest.raises(Aborted):
            async with mutex.hold("k"):
                pass
    async with mutex.hold("k"):
        pass
