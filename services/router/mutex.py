"""Per-conversation mutual exclusion: Redis across replicas, or in-process for one replica.

The Redis lock is `SET key token NX PX ttl` with a random token and a Lua
compare-and-delete release. Waiting is not sleep-and-poll: the releaser pushes
onto a per-lock wake-up list and waiters block on it with BLPOP (Redis serves
blocked clients first come, first served), bounded by both the caller's wait
budget and the holder's remaining TTL so a crashed holder's lock is retried
the moment it expires. The lock key and its wake-up list share a hash tag so
they live in one slot of a Redis Cluster.

Every Redis command has a socket timeout (PAGEWIRE_REDIS_TIMEOUT_S, shorter than
the gateway's Ingest deadline), so a frozen or unreachable Redis is `Unavailable`
(503, Meta retries) within it instead of holding the POST until its deadline. A
BLPOP therefore blocks in slices of half that timeout and the waiter loops (try
SET NX again, then block again): it is still woken by the releaser's push, at once.

Both kinds time the wait and the hold (`pagewire_lock_wait_seconds`,
`pagewire_lock_hold_seconds`, `pagewire_lock_wait_exceeded_total`) and, while
tracing is on, make a `lock.wait` and a `lock.hold` span; the work done under
the lock nests in the latter. Spans name a conversation by its key's hash.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from pagewire.kit import telemetry
from pagewire.kit.errors import Aborted, Unavailable
from services.router import metrics

tracer = telemetry.tracer("pagewire.router.mutex")

# KEYS[1] lock, KEYS[2] wake-up list; ARGV[1] token, ARGV[2] ttl of the wake-up list (ms).
# Only the holder whose token is still stored may delete the lock; it then wakes one waiter.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], -1, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


# KEYS[1] lock; ARGV[1] token, ARGV[2] ttl (ms). Extends the lock only while it is ours.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


# KEYS[1] lock, KEYS[2] fence floor; ARGV[1] token, ARGV[2] ttl (ms), ARGV[3] fence,
# ARGV[4] floor ttl (ms). Takes the lock only for a fence no lower than every earlier
# holder's (the floor), so the holders of a conversation have increasing fences even when
# a fence is taken before its lock: -1 means a newer holder came first (take a new fence).
_TRY = """
local floor = tonumber(redis.call('GET', KEYS[2]) or '0')
if floor > tonumber(ARGV[3]) then
  return -1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
"""
# How long a conversation remembers its last holder's fence: far longer than any batch.
FLOOR_TTL_MS = 600_000


def _lock_kind(key: str) -> str:
    """`page` for a page's parking lock (`park:…`), `conversation` otherwise."""
    return "page" if key.startswith("park:") else "conversation"


def _span_attributes(key: str) -> dict[str, str]:
    kind = _lock_kind(key)
    if kind == "page":
        return {"pagewire.lock": kind, "pagewire.page_id": key.rsplit(":", 1)[-1]}
    return {"pagewire.lock": kind, "pagewire.conversation.key_hash": telemetry.key_hash(key)}


@contextmanager
def _waiting(key: str) -> Iterator[None]:
    """Times (and traces) the wait for `key`'s lock; counts a wait that ran out."""
    kind = _lock_kind(key)
    started = time.monotonic()
    with tracer.start_as_current_span("lock.wait", attributes=_span_attributes(key)):
        try:
            yield
        except Aborted:
            metrics.LOCK_WAIT_EXCEEDED.labels(kind).inc()
            raise
        finally:
            metrics.LOCK_WAIT.labels(kind).observe(time.monotonic() - started)


@contextmanager
def _holding(key: str) -> Iterator[None]:
    """Times (and traces) the hold of `key`'s lock; the work under it nests in the span."""
    started = time.monotonic()
    with tracer.start_as_current_span("lock.hold", attributes=_span_attributes(key)):
        try:
            yield
        finally:
            metrics.LOCK_HOLD.labels(_lock_kind(key)).observe(time.monotonic() - started)


class Lease(Protocol):
    """A held lock."""

    async def still_held(self) -> bool: ...


class ConversationLocks(Protocol):
    """Mutual exclusion by conversation key."""

    # How often a batch holding locks renews them.
    renew_period_s: float

    def hold(self, key: str) -> AbstractAsyncContextManager[Lease]: ...

    async def try_many(self, keys: Sequence[str], fence: int) -> dict[str, str]:
        """Takes, without waiting, every free lock of `keys` for a holder with `fence`;
        returns key → token of those taken (the others are busy or had a newer holder)."""
        ...

    async def renew_many(self, held: Mapping[str, str]) -> set[str]:
        """Extends the held locks; the keys still held."""
        ...

    async def release_many(self, held: Mapping[str, str]) -> None:
        """Releases the held locks (and wakes whoever waits on them)."""
        ...

    async def close(self) -> None: ...


class _LocalLease:
    async def still_held(self) -> bool:
        return True


class _RedisLease:
    def __init__(self, locks: RedisLocks, key: str, token: str) -> None:
        self._locks, self._key, self._token = locks, key, token

    async def still_held(self) -> bool:
        lock_key, _ = self._locks.keys_for(self._key)
        try:
            return await self._locks.redis.get(lock_key) == self._token.encode()
        except RedisError as exc:
            raise Unavailable(f"redis unavailable ({type(exc).__name__})") from None


class LocalLocks:
    """asyncio locks in this process: correct only while a single router replica runs."""

    def __init__(self, wait_ms: int) -> None:
        self._wait_s = wait_ms / 1000
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._held: dict[str, asyncio.Lock] = {}
        self._floors: dict[str, int] = {}
        # In-process locks never expire: nothing to renew.
        self.renew_period_s = 3600.0

    async def try_many(self, keys: Sequence[str], fence: int) -> dict[str, str]:
        taken: dict[str, str] = {}
        for key in keys:
            lock = self._locks.get(key)
            if lock is None:
                lock = asyncio.Lock()
                self._locks[key] = lock
            if lock.locked() or self._floors.get(key, 0) > fence:
                continue
            await lock.acquire()  # free: returns at once
            self._held[key] = lock
            self._floors[key] = fence
            taken[key] = "local"
        return taken

    async def renew_many(self, held: Mapping[str, str]) -> set[str]:
        return set(held)

    async def release_many(self, held: Mapping[str, str]) -> None:
        for key in held:
            lock = self._held.pop(key, None)
            if lock is not None and lock.locked():
                lock.release()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        with _waiting(key):
            try:
                await asyncio.wait_for(lock.acquire(), self._wait_s)
            except TimeoutError:
                raise Aborted("conversation is busy: lock wait exceeded") from None
        try:
            with _holding(key):
                yield _LocalLease()
        finally:
            lock.release()

    async def close(self) -> None:
        return None


class RedisLocks:
    """Redis locks shared by every router replica."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_ms: int, wait_ms: int) -> None:
        self.redis = client
        self._prefix = prefix
        self._ttl_ms = ttl_ms
        self._wait_ms = wait_ms
        self._release = client.register_script(_RELEASE)
        self._extend = client.register_script(_EXTEND)
        self._try = client.register_script(_TRY)
        self.renew_period_s = ttl_ms / 3000
        # A BLPOP must return before the socket timeout fires, or a quiet wait would read
        # as a dead Redis: block at most half of it at a time (None: no socket timeout).
        socket_timeout = client.get_connection_kwargs().get("socket_timeout")
        self._block_s = socket_timeout / 2 if socket_timeout else None

    def keys_for(self, key: str) -> tuple[str, str]:
        """The lock key and its wake-up list, sharing the hash tag `{key}`."""
        lock = f"{self._prefix}:lock:{{{key}}}"
        return lock, lock + ":wake"

    async def acquire(self, key: str) -> str:
        """Returns the token of a newly taken lock, or raises Aborted when the wait runs out."""
        lock_key, wake_key = self.keys_for(key)
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self._wait_ms / 1000
        try:
            while True:
                if await self.redis.set(lock_key, token, nx=True, px=self._ttl_ms):
                    return token
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Aborted("conversation is busy: lock wait exceeded")
                ttl = await self.redis.pttl(lock_key)
                # A lock with no TTL left (or already gone) is retried at once.
                if ttl > 0:
                    block = min(remaining, ttl / 1000 + 0.001)
                    if self._block_s is not None:
                        block = min(block, self._block_s)
                    await self.redis.blpop([wake_key], timeout=block)
        except RedisError as exc:
            raise Unavailable(f"redis unavailable ({type(exc).__name__})") from None

    async def release(self, key: str, token: str) -> bool:
        """Releases if still held by `token`; False means the lock had expired."""
        lock_key, wake_key = self.keys_for(key)
        try:
            return bool(await self._release(keys=[lock_key, wake_key], args=[token, self._ttl_ms]))
        except RedisError:
            # The lock expires by itself; the work under it already committed or rolled back.
            return False

    async def _keep_alive(self, key: str, token: str) -> None:
        """Extends the lock every third of its TTL while the work runs; a stalled process
        stalls this too, so its lock expires and the fence protects what it writes later."""
        lock_key, _ = self.keys_for(key)
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)  # a renewal period, not a synchronisation
            try:
                if not await self._extend(keys=[lock_key], args=[token, self._ttl_ms]):
                    return
            except RedisError:
                return

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        with _waiting(key):
            token = await self.acquire(key)
        renew = asyncio.create_task(self._keep_alive(key, token))
        try:
            with _holding(key):
                yield _RedisLease(self, key, token)
        finally:
            renew.cancel()
            await self.release(key, token)

    def _floor_key(self, key: str) -> str:
        return f"{self._prefix}:lock:{{{key}}}:fence"

    async def _pipelined(  # type: ignore[no-untyped-def]
        self, script, calls: Sequence[tuple[list[str], list[object]]]
    ) -> list[object]:
        """One round trip for every call of `script`: EVALSHA in a pipeline (not a
        transaction: each call touches its own hash slot, as a Redis Cluster needs). The
        script is loaded only when Redis does not know it (after a restart)."""
        if not calls:
            return []
        for attempt in (1, 2):
            try:
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                answers = list(await pipe.execute(raise_on_error=False))
                if not any(isinstance(a, NoScriptError) for a in answers):
                    failed = next((a for a in answers if isinstance(a, Exception)), None)
                    if failed is not None:
                        raise failed
                    return answers
                if attempt == 1:
                    await self.redis.script_load(script.script)
            except RedisError as exc:
                raise Unavailable(f"redis unavailable ({type(exc).__name__})") from None
        raise Unavailable("redis unavailable (script not loaded)")

    async def try_many(self, keys: Sequence[str], fence: int) -> dict[str, str]:
        tokens = {key: secrets.token_hex(16) for key in keys}
        calls = [
            (
                [self.keys_for(key)[0], self._floor_key(key)],
                [tokens[key], self._ttl_ms, fence, FLOOR_TTL_MS],
            )
            for key in keys
        ]
        answers = await self._pipelined(self._try, calls)
        return {key: tokens[key] for key, answer in zip(keys, answers, strict=True) if answer == 1}

    async def renew_many(self, held: Mapping[str, str]) -> set[str]:
        keys = list(held)
        calls = [([self.keys_for(key)[0]], [held[key], self._ttl_ms]) for key in keys]
        answers = await self._pipelined(self._extend, calls)
        return {key for key, answer in zip(keys, answers, strict=True) if answer}

    async def release_many(self, held: Mapping[str, str]) -> None:
        calls = [(list(self.keys_for(key)), [token, self._ttl_ms]) for key, token in held.items()]
        try:
            await self._pipelined(self._release, calls)
        except Unavailable:
            pass  # the locks expire by themselves; the batch already committed or rolled back

    async def ping(self) -> None:
        """Raises Unavailable unless Redis answers within the client's socket timeout."""
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise Unavailable(f"redis unavailable ({type(exc).__name__})") from None

    async def close(self) -> None:
        await self.redis.aclose()


def redis_client(url: str, timeout_s: float = 1.0) -> aioredis.Redis:
    """The process's Redis client: connecting and every reply bounded by `timeout_s`.

    Keep `timeout_s` below the gateway's Ingest deadline. A command is retried once,
    at once, on a connection error (a pooled connection that a Redis restart closed),
    never on a timeout: a frozen Redis costs one timeout, not redis-py's default ten
    retries. While tracing is on, each command is a span (its name only, never its
    arguments)."""
    client = aioredis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    telemetry.instrument_redis(client)
    return client
