"""How a SendMessage waits for its conversation's lock: the router's wake-up and two others.

Apply batches never wait for a lock (a busy conversation's entries go to a later
batch: that ablation is bench/burst.py's). The one caller that still waits is
`SendMessage`, through `RedisLocks.hold`, which blocks on the lock's wake-up
list (BLPOP) and is woken the moment the holder releases. The two strategies it
is compared with, as bench-only subclasses, keep everything else — `SET NX PX`,
the token, the Lua release, renewal — and only replace how a waiter waits:

- `poll:100`  — try again every 100 ms (redis-py's `Lock.acquire` default `sleep=0.1`);
- `retry:1000` — try again after 1 s (Chatwoot's policy: a job that finds the
  conversation locked is re-enqueued to run a second later).

`send_ablation` measures them in-process on the run's Redis: `holders` sends into
one conversation at once, each holding the lock for `hold_ms` (standing for the
Graph call and the writes a send does under it), with the router's wait budget
(PAGEWIRE_LOCK_WAIT_MS, 3 s): first attempt → last release, and the waits that
ran out (ABORTED, which a client would retry). `bench.router_variant` can still
run a whole router with one of them (`PAGEWIRE_BENCH_LOCK_WAIT`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bench.driver import percentile
from pagewire.kit.errors import Aborted, Unavailable
from services.router.mutex import RedisLocks, redis_client

STRATEGIES = ("wake", "poll:100", "retry:1000")


class SleepingRedisLocks(RedisLocks):
    """`RedisLocks` whose waiters sleep `interval_s` between attempts instead of blocking
    on the wake-up list."""

    interval_s = 0.1

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_ms: int, wait_ms: int) -> None:
        super().__init__(client, prefix, ttl_ms, wait_ms)
        self._budget_s = wait_ms / 1000
        self._lease_ms = ttl_ms

    async def acquire(self, key: str) -> str:
        lock_key, _ = self.keys_for(key)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self._budget_s
        try:
            while True:
                if await self.redis.set(lock_key, token, nx=True, px=self._lease_ms):
                    return token
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Aborted("conversation is busy: lock wait exceeded")
                # The strategy under test: a fixed sleep, whatever the holder does.
                await asyncio.sleep(min(self.interval_s, remaining))
        except RedisError as exc:
            raise Unavailable(f"redis unavailable ({type(exc).__name__})") from None


class Poll100msLocks(SleepingRedisLocks):
    interval_s = 0.1


class Retry1sLocks(SleepingRedisLocks):
    interval_s = 1.0


def lock_class(strategy: str) -> type[RedisLocks]:
    """The lock class of a strategy named in STRATEGIES."""
    classes: dict[str, type[RedisLocks]] = {
        "wake": RedisLocks,
        "poll:100": Poll100msLocks,
        "retry:1000": Retry1sLocks,
    }
    if strategy not in classes:
        raise ValueError(f"unknown lock strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
    return classes[strategy]


async def _contended(locks: RedisLocks, key: str, holders: int, hold_ms: float) -> dict[str, Any]:
    """`holders` concurrent holds of `key`, each `hold_ms` long: how long all took."""
    waits: list[float] = []
    aborted = 0

    async def send() -> None:
        nonlocal aborted
        began = time.perf_counter()
        try:
            async with locks.hold(key):
                waits.append(1000 * (time.perf_counter() - began))
                # The work under the lock (Graph call, writes): a stand-in of fixed length.
                await asyncio.sleep(hold_ms / 1000)
        except Aborted:
            aborted += 1

    began = time.perf_counter()
    await asyncio.gather(*(send() for _ in range(holders)))
    seconds = time.perf_counter() - began
    waits.sort()
    done = holders - aborted
    return {
        "seconds": round(seconds, 3),
        "sends_per_s": round(done / seconds, 1) if seconds else 0.0,
        "done": done,
        "aborted": aborted,
        # Share of the time the lock did work: 1.0 would be no gap between holders.
        "busy_fraction": round(done * hold_ms / 1000 / seconds, 3) if seconds else 0.0,
        "wait_ms": {"p50": round(percentile(waits, 50), 1), "max": round(waits[-1], 1)}
        if waits
        else {},
    }


async def send_ablation(
    redis_url: str,
    prefix: str,
    *,
    holders: int,
    hold_ms: float = 20.0,
    ttl_ms: int = 10_000,
    wait_ms: int = 3_000,
) -> dict[str, Any]:
    """Each strategy: `holders` concurrent holds of one conversation's lock (docstring)."""
    out: dict[str, Any] = {"holders": holders, "hold_ms": hold_ms, "wait_budget_ms": wait_ms}
    for strategy in STRATEGIES:
        locks = lock_class(strategy)(redis_client(redis_url), prefix, ttl_ms, wait_ms)
        try:
            key = f"facebook:bench:{strategy.replace(':', '')}"
            out[strategy] = await _contended(locks, key, holders, hold_ms)
        finally:
            await locks.close()
    return out
