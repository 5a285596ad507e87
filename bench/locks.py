"""Lock waiting strategies for the ablation, as a bench-only subclass of the router's lock.

The router's `RedisLocks` waits for a busy conversation by blocking on the lock's
wake-up list (BLPOP), woken the moment the holder releases. The two strategies
it is compared with keep everything else — `SET NX PX`, the token, the Lua
release, renewal — and only replace how a waiter waits:

- `poll:100`  — try again every 100 ms (redis-py's `Lock.acquire` default `sleep=0.1`);
- `retry:1000` — try again after 1 s (Chatwoot's policy: a job that finds the
  conversation locked is re-enqueued to run a second later).
"""

from __future__ import annotations

import asyncio
import secrets
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pagewire.kit.errors import Aborted, Unavailable
from services.router.mutex import RedisLocks

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
