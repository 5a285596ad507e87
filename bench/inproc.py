"""The router's own cost per event, measured in-process with no gRPC and no gateway.

A real `Router` on the run's PostgreSQL and Redis ingests single-message events
one after another. It reports what one event costs: wall time, CPU time of this
process, SQL statements, how many of them SQLAlchemy had to compile afresh
because the statement has no cache key, and the lock's share (acquire, release,
the fencing number) — the "lock overhead per event" of the design's figures.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import event

from pagewire.kit.db import create_engine, sessions
from pagewire.proto import events_pb2
from services.router.fencing import Fences
from services.router.mutex import RedisLocks, redis_client
from services.router.routing import Router

PAGE = "109384756201938"


class _OnePage:
    """Every page belongs to one account (the page lookup is not what is measured)."""

    async def account_for(self, platform: int, page_id: str, *, fresh: bool = False) -> str:
        return "acme"

    def forget(self, platform: int, page_id: str) -> None:
        return None


class _TimedLocks(RedisLocks):
    spent = 0.0

    async def acquire(self, key: str) -> str:
        began = time.perf_counter()
        try:
            return await super().acquire(key)
        finally:
            self.spent += time.perf_counter() - began

    async def release(self, key: str, token: str) -> bool:
        began = time.perf_counter()
        try:
            return await super().release(key, token)
        finally:
            self.spent += time.perf_counter() - began


class _TimedFences(Fences):
    spent = 0.0

    async def next(self) -> int:
        began = time.perf_counter()
        try:
            return await super().next()
        finally:
            self.spent += time.perf_counter() - began


async def router_cost(database_url: str, redis_url: str, prefix: str, count: int) -> dict[str, Any]:
    """Per-event figures over `count` sequential single-event ingests (after a warm-up)."""
    engine = create_engine(database_url, "router")
    statements = 0
    cache: Counter[str] = Counter()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _count(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        nonlocal statements
        statements += 1
        hit = getattr(context, "cache_hit", None)
        cache[str(hit).rsplit(".", 1)[-1] if hit is not None else "none"] += 1

    locks = _TimedLocks(redis_client(redis_url), prefix, 10_000, 3_000)
    fences = _TimedFences(engine)
    router = Router(sessions(engine), locks, _OnePage(), fences=fences)
    base = 1_795_000_000_000

    def one(i: int) -> events_pb2.Event:
        mid = f"m_inproc_{i:06d}"
        return events_pb2.Event(
            id=mid,
            platform=events_pb2.FACEBOOK,
            page_id=PAGE,
            user_id=f"55{i % 20:014d}",
            direction=events_pb2.INBOUND,
            timestamp_ms=base + i,
            message=events_pb2.MessageEvent(mid=mid, text=f"in-process {i}"),
        )

    try:
        warmup = 40
        for i in range(warmup):
            await router.ingest([one(i)])
        statements, cache = 0, Counter()
        locks.spent = fences.spent = 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(warmup, warmup + count):
            await router.ingest([one(i)])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await locks.close()
        await engine.dispose()
    return {
        "events": count,
        "wall_ms_per_event": round(1000 * wall / count, 3),
        "cpu_ms_per_event": round(1000 * cpu / count, 3),
        "sql_statements_per_event": round(statements / count, 2),
        "statements_by_compile_cache": {k: round(v / count, 2) for k, v in sorted(cache.items())},
        "lock_ms_per_event": round(1000 * locks.spent / count, 3),
        "fence_ms_per_event": round(1000 * fences.spent / count, 3),
    }
