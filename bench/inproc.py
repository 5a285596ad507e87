"""The router's own cost per event, in-process: its two stages apart, no gRPC, no gateway.

The router's parts are built as the composition root builds them
(`services.router.assembly.build_router`), on the run's PostgreSQL (a database
of their own, migrated for the router alone and dropped afterwards) and Redis
(a key prefix of the run's), with a page directory that knows every bench page.
The events are the bench's mix — Meta's fixtures with fresh ids, normalized by
the gateway's own `normalize_envelope` — one Ingest call per webhook body, as the
gateway makes them.

- **append** (the ACK path): `callers` concurrent callers, each calling
  `Appender.ingest` with one body's events after another, so the group commit
  shares each commit among whatever arrived meanwhile; and one caller alone,
  whose call time is a commit's latency (the floor under any ACK).
- **apply** (the visible path): a batch's worth of events appended first, then
  `Applier.run_once` until nothing is left to claim, `batch` entries a batch —
  `rounds` times, the first into new conversations, the next into the same ones;
  and one webhook's events per batch, batch after batch: what a batch costs when
  the apply stage keeps up with a trickle (each commit wakes a worker at once).

Per event (and per batch): wall and CPU time of this process, the SQL statements
SQLAlchemy sent (`after_cursor_execute`, each execute once), transactions,
connection checkouts (each one a `SELECT 1` pre-ping round trip), the time the
statements took as the client saw it, the Redis lock round trips' time, and a
cProfile (CPU time) of one pass of each stage, summed by who spends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import pstats
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import db
from bench.bodies import FACEBOOK_PAGES, INSTAGRAM_PAGES, Generator
from bench.driver import percentile
from bench.procs import APP_SECRET
from pagewire.contract import Platform
from pagewire.kit.db import create_engine, sessions
from pagewire.proto import events_pb2
from services.router.apply import ApplySettings
from services.router.assembly import RouterParts, build_router
from services.router.mutex import RedisLocks, redis_client
from services.router.pages import PageInfo

try:  # the gateway's normalization, where it lives now (it moved to pagewire/)
    from pagewire.normalize import normalize_envelope, parse_envelope
except ImportError:
    from services.gateway.normalize import (  # type: ignore[no-redef]
        normalize_envelope,
        parse_envelope,
    )

ACCOUNTS = {**FACEBOOK_PAGES, **INSTAGRAM_PAGES}

# Who spends a profiled pass's CPU: the first pattern a function's file (or, for C
# functions, its name) matches. Order matters: the router's modules before the rest.
PARTS: tuple[tuple[str, str], ...] = (
    ("router: apply planning (planner.py)", r"services/router/planner\.py"),
    ("router: apply stage (apply, parking, keys)", r"services/router/(apply|parking|keys)\.py"),
    ("router: store (statements, arrays, rows)", r"services/router/store/"),
    ("router: ingest (validate, rows, serialize)", r"services/router/ingest\.py|/contract\.py"),
    (
        "protobuf (parse, serialize)",
        r"google/protobuf|google\._upb|upb|SerializeToString|FromString",
    ),
    ("psycopg (send, dump, load)", r"psycopg"),
    ("sqlalchemy", r"sqlalchemy"),
    ("redis-py", r"/redis/"),
    ("telemetry, metrics, logging", r"opentelemetry|prometheus_client|/logging/"),
    ("asyncio event loop", r"/asyncio/|select|epoll|socket"),
)


class OnePage:
    """Every bench page connected to its account (the page lookup is not what is measured)."""

    async def page(self, platform: int, page_id: str, *, fresh: bool = False) -> PageInfo:
        return PageInfo(ACCOUNTS.get(page_id, "acme"), False)

    def remember(self, platform: int, page_id: str, account_id: str) -> None:
        return None

    def forget(self, platform: int, page_id: str) -> None:
        return None


class TimedLocks(RedisLocks):
    """The router's Redis locks, timing the apply stage's pipelined round trips."""

    spent = 0.0
    round_trips = 0

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.spent += time.perf_counter() - began
            self.round_trips += 1

    async def try_many(self, keys: Sequence[str], fence: int) -> dict[str, str]:
        with self._timed():
            return await super().try_many(keys, fence)

    async def release_many(self, held: Mapping[str, str]) -> None:
        with self._timed():
            await super().release_many(held)


class Statements:
    """What the engine sent: statements, their client-side time, transactions, checkouts."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.reset()
        sync = engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before)
        event.listen(sync, "after_cursor_execute", self._after)
        event.listen(sync, "commit", self._commit)
        event.listen(sync, "rollback", self._rollback)
        event.listen(sync.pool, "checkout", self._checkout)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing is counted meanwhile."""
        self.counting = False
        try:
            yield
        finally:
            self.counting = True

    def reset(self) -> None:
        self.counting = True
        self.count = 0
        self.seconds = 0.0
        self.commits = 0
        self.rollbacks = 0
        self.checkouts = 0
        self.cache: Counter[str] = Counter()
        self.log: list[tuple[str, float]] = []

    def _before(self, conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        spent = time.perf_counter() - conn.info["bench_started"].pop()
        if not self.counting:
            return
        self.count += 1
        self.seconds += spent
        hit = getattr(context, "cache_hit", None)
        self.cache[str(hit).rsplit(".", 1)[-1] if hit is not None else "driver SQL"] += 1
        self.log.append((label(statement), spent))

    def _commit(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.commits += self.counting

    def _rollback(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.rollbacks += self.counting

    def _checkout(self, dbapi_connection, record, proxy) -> None:  # type: ignore[no-untyped-def]
        self.checkouts += self.counting


def label(statement: str) -> str:
    """A statement's verb and table: `INSERT messages`, `UPDATE events`, `SELECT pages`."""
    words = statement.split()
    verb = words[0].upper() if words else "?"
    match = re.search(r"\b(?:INTO|UPDATE|FROM)\s+\"?(\w+)", statement, re.IGNORECASE)
    table = match.group(1) if match else ""
    if verb == "SELECT" and "nextval" in statement:
        return "SELECT nextval (fence)"
    return f"{verb} {table}".strip()


def mixed_calls(seed: int, events: int) -> list[list[events_pb2.Event]]:
    """Ingest calls of the bench's mix, one per webhook body, `events` events in all."""
    generator = Generator(APP_SECRET, seed=seed)
    calls: list[list[events_pb2.Event]] = []
    total = 0
    while total < events:
        body = generator.body()
        platform = Platform.INSTAGRAM if body.path.endswith("instagram") else Platform.FACEBOOK
        found = normalize_envelope(parse_envelope(body.data), platform=platform)[: events - total]
        if found:
            calls.append(found)
            total += len(found)
    return calls


def kinds(calls: Sequence[Sequence[events_pb2.Event]]) -> dict[str, int]:
    counted = Counter(
        ("echo" if e.message.is_echo else "message")
        if e.WhichOneof("kind") == "message"
        else str(e.WhichOneof("kind"))
        for call in calls
        for e in call
    )
    return dict(counted.most_common())


def _part(key: tuple[str, int, str], compiled: list[tuple[str, re.Pattern[str]]]) -> str:
    filename, _, function = key
    where = f"{filename}:{function}"
    return next((name for name, p in compiled if p.search(where)), "other (python, stdlib)")


def summarise_profile(
    profile: cProfile.Profile, events: int, cpu_us_per_event: float, top: int = 12
) -> dict[str, Any]:
    """CPU time of a profiled pass by part (PARTS): percent, and µs per event estimated as
    that share of the unprofiled pass's CPU (`cpu_us_per_event`); and the functions with
    the most CPU time of their own. A C function's time (len, list.append, struct.pack, a
    protobuf parse) goes to the part of whoever called it."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    compiled = [(name, re.compile(pattern)) for name, pattern in PARTS]
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0.0
    for key, (_, _, tottime, _, callers) in stats.items():
        filename, line, function = key
        total += tottime
        short = filename.split("site-packages/")[-1].split("/main/")[-1]
        own[f"{function} ({short}:{line})" if filename != "~" else function] += tottime
        named = _part(key, compiled)
        if filename != "~" or named != "other (python, stdlib)" or not callers:
            parts[named] += tottime
            continue
        edges = {caller: edge[2] for caller, edge in callers.items()}
        spread = sum(edges.values()) or 1.0
        for caller, share in edges.items():
            parts[_part(caller, compiled)] += tottime * share / spread
    if not total:
        return {"cpu_s": 0.0}
    return {
        "cpu_s_profiled": round(total, 4),
        "note": "cProfile on a CPU-time clock; its overhead weighs most on code of many small"
        " calls (array dumping, Redis command packing), so shares are indicative",
        "by_part": {
            name: {
                "pct": round(100 * t / total, 1),
                "est_us_per_event": round(cpu_us_per_event * t / total, 1),
            }
            for name, t in parts.most_common()
        },
        "top_self": [
            {"function": name, "pct": round(100 * t / total, 1)} for name, t in own.most_common(top)
        ],
    }


async def _append(parts: RouterParts, calls: Sequence[Sequence[events_pb2.Event]], callers: int):  # type: ignore[no-untyped-def]
    """Every call through the Appender from `callers` concurrent callers; call times."""
    queue = list(reversed(calls))
    times: list[float] = []

    async def caller() -> None:
        while queue:
            call = queue.pop()
            began = time.perf_counter()
            await parts.appender.ingest(call)
            times.append(1000 * (time.perf_counter() - began))

    await asyncio.gather(*(caller() for _ in range(callers)))
    return times


async def measure_append(
    parts: RouterParts, counter: Statements, calls: list[list[events_pb2.Event]], callers: int
) -> dict[str, Any]:
    events = sum(len(c) for c in calls)
    counter.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    times = await _append(parts, calls, callers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    times.sort()
    return {
        "callers": callers,
        "calls": len(calls),
        "events": events,
        "seconds": round(wall, 3),
        "events_per_s": round(events / wall, 1),
        "cpu_us_per_event": round(1e6 * cpu / events, 1),
        "statements_per_event": round(counter.count / events, 4),
        "commits": counter.commits,
        "events_per_commit": round(events / max(1, counter.commits), 1),
        "checkouts_per_event": round(counter.checkouts / events, 4),
        "sql_ms_per_commit": round(1000 * counter.seconds / max(1, counter.commits), 2),
        "call_ms": {
            "p50": round(percentile(times, 50), 2),
            "p99": round(percentile(times, 99), 2),
        },
    }


async def _apply_all(parts: RouterParts) -> tuple[int, int]:
    """`run_once` until nothing is left to claim: (batches that claimed, entries applied)."""
    batches = applied = 0
    while True:
        result = await parts.applier.run_once()
        if not result.claimed:
            return batches, applied
        batches += 1
        applied += result.applied


async def measure_apply(
    parts: RouterParts,
    counter: Statements,
    locks: TimedLocks,
    rounds: list[list[list[events_pb2.Event]]],
    batch: int,
) -> dict[str, Any]:
    """Each round: its events appended (one call per body), then applied in batches."""
    per_round = []
    first_statements: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    cache: Counter[str] = Counter()
    for number, calls in enumerate(rounds):
        events = sum(len(c) for c in calls)
        await _append(parts, calls, 16)
        counter.reset()
        locks.spent, locks.round_trips = 0.0, 0
        wall, cpu = time.perf_counter(), time.process_time()
        batches, applied = await _apply_all(parts)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if number == 0:
            first_statements = [
                {"statement": name, "ms": round(1000 * spent, 2)} for name, spent in counter.log
            ]
        cache.update(counter.cache)
        row = {
            "events": events,
            "applied": applied,
            "batches": batches,
            "seconds": round(wall, 4),
            "events_per_s": round(applied / wall, 1) if wall else 0.0,
            "cpu_us_per_event": round(1e6 * cpu / max(1, applied), 1),
            "statements": counter.count,
            "statements_per_event": round(counter.count / max(1, applied), 4),
            "transactions": counter.commits + counter.rollbacks,
            "checkouts": counter.checkouts,
            "sql_ms": round(1000 * counter.seconds, 2),
            "redis_lock_ms": round(1000 * locks.spent, 2),
            "redis_round_trips": locks.round_trips,
        }
        per_round.append(row)
        for key in ("applied", "batches", "statements", "transactions", "checkouts"):
            totals[key] += row[key]
        totals["cpu_us"] += row["cpu_us_per_event"] * row["applied"]
        totals["seconds"] += wall
        totals["sql_ms"] += row["sql_ms"]
        totals["redis_lock_ms"] += row["redis_lock_ms"]
    applied = max(1, totals["applied"])
    batches = max(1, totals["batches"])
    return {
        "batch": batch,
        "rounds": len(rounds),
        "events": totals["applied"],
        "batches": totals["batches"],
        "events_per_s": round(totals["applied"] / totals["seconds"], 1) if totals["seconds"] else 0,
        "cpu_us_per_event": round(totals["cpu_us"] / applied, 1),
        "statements_per_event": round(totals["statements"] / applied, 4),
        "statements_per_batch": round(totals["statements"] / batches, 1),
        "transactions_per_batch": round(totals["transactions"] / batches, 1),
        "checkouts_per_batch": round(totals["checkouts"] / batches, 1),
        "sql_ms_per_batch": round(totals["sql_ms"] / batches, 2),
        "redis_lock_ms_per_batch": round(totals["redis_lock_ms"] / batches, 2),
        "wall_ms_per_batch": round(1000 * totals["seconds"] / batches, 2),
        "statements_by_compile_cache": dict(cache),
        # The target's figure: the first batch of 500 mixed events, new conversations.
        "first_batch_statements_per_event": per_round[0]["statements_per_event"],
        "first_batch_statements": first_statements,
        "per_round": per_round,
    }


async def measure_small_batches(
    parts: RouterParts, counter: Statements, locks: TimedLocks, calls: list[list[events_pb2.Event]]
) -> dict[str, Any]:
    """One webhook's events appended, then one batch applying just them, call after call:
    what a batch costs when the apply stage keeps up with a trickle (the fixed cost)."""
    events = sum(len(c) for c in calls)
    spent_wall = spent_cpu = 0.0
    counter.reset()
    locks.spent, locks.round_trips = 0.0, 0
    for call in calls:
        with counter.paused():  # the append's statements are not the batch's
            await parts.appender.ingest(call)
        wall, cpu = time.perf_counter(), time.process_time()
        await parts.applier.run_once()
        spent_wall += time.perf_counter() - wall
        spent_cpu += time.process_time() - cpu
    batches = len(calls)
    return {
        "batches": batches,
        "events": events,
        "events_per_batch": round(events / batches, 2),
        "cpu_us_per_batch": round(1e6 * spent_cpu / batches, 1),
        "cpu_us_per_event": round(1e6 * spent_cpu / events, 1),
        "wall_ms_per_batch": round(1000 * spent_wall / batches, 2),
        "statements_per_batch": round(counter.count / batches, 1),
        "transactions_per_batch": round((counter.commits + counter.rollbacks) / batches, 1),
        "checkouts_per_batch": round(counter.checkouts / batches, 1),
        "redis_round_trips_per_batch": round(locks.round_trips / batches, 1),
        "redis_lock_ms_per_batch": round(1000 * locks.spent / batches, 2),
    }


async def router_cost(
    admin_url: str,
    database: str,
    redis_url: str,
    prefix: str,
    *,
    append_events: int,
    callers: int,
    apply_rounds: int,
    small_batches: int = 20,
    batch: int = 500,
    profile: bool = True,
) -> dict[str, Any]:
    """The in-process figures (module docstring); a database of their own, dropped after."""
    seed = secrets.randbits(32)
    # Built before anything is timed: the gateway's normalization is not the router's cost.
    append_calls = mixed_calls(seed, append_events)
    one_caller = mixed_calls(seed + 1, min(200, append_events // 4))
    rounds = [mixed_calls(seed + 2 + r, batch) for r in range(apply_rounds)]
    profiled_append = mixed_calls(seed + 100, min(2000, append_events))
    profiled_apply = mixed_calls(seed + 101, batch)
    one_caller_again = mixed_calls(seed + 103, min(200, append_events // 4))
    trickle = mixed_calls(seed + 104, 2 * small_batches)[:small_batches]
    warmup = mixed_calls(seed + 102, 200)
    with db.database(admin_url, database, services=("router",)) as url:
        engine = create_engine(db.sqlalchemy_url(url), "router", pool_size=10)
        counter = Statements(engine)
        locks = TimedLocks(redis_client(redis_url), prefix, 10_000, 3_000)
        parts = build_router(
            engine,
            sessions(engine),
            locks,
            OnePage(),  # type: ignore[arg-type]
            apply=ApplySettings(batch=batch, workers=1),
            parked_sweep_s=0,
        )
        try:
            # Warm-up: connections opened, statements prepared, pages learned.
            await _append(parts, warmup, 8)
            await _apply_all(parts)
            append = await measure_append(parts, counter, append_calls, callers)
            alone = await measure_append(parts, counter, one_caller, 1)
            await _apply_all(parts)  # what the append figures appended
            applied = await measure_apply(parts, counter, locks, rounds, batch)
            small = await measure_small_batches(parts, counter, locks, trickle)
            profiles: dict[str, Any] = {}
            if profile:
                passes = (
                    ("append", profiled_append, callers, append["cpu_us_per_event"]),
                    ("append_one_caller", one_caller_again, 1, alone["cpu_us_per_event"]),
                )
                for name, calls, concurrency, cpu_us in passes:
                    profiler = cProfile.Profile(time.process_time)
                    profiler.enable()
                    await _append(parts, calls, concurrency)
                    profiler.disable()
                    events = sum(len(c) for c in calls)
                    profiles[name] = summarise_profile(profiler, events, cpu_us)
                await _apply_all(parts)
                await _append(parts, profiled_apply, 16)
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
                await _apply_all(parts)
                profiler.disable()
                profiles["apply"] = summarise_profile(
                    profiler, sum(len(c) for c in profiled_apply), applied["cpu_us_per_event"]
                )
        finally:
            await parts.appender.close()
            await locks.close()
            await engine.dispose()
    append_cpu = append["cpu_us_per_event"]
    apply_cpu = applied["cpu_us_per_event"]
    return {
        "database": "a database of its own on the run's PostgreSQL (router schema only)",
        "mix": kinds(rounds[0]),
        "append": append,
        "append_one_caller": alone,
        "apply": applied,
        "apply_one_webhook_per_batch": small,
        "profile": profiles,
        # The keys of the old in-process figure (one router doing append and apply of an
        # event): the two stages' costs added up, per event.
        "events": append["events"] + applied["events"],
        "cpu_ms_per_event": round((append_cpu + apply_cpu) / 1000, 4),
        "wall_ms_per_event": round(
            1000 / append["events_per_s"] + 1000 / max(1.0, applied["events_per_s"]), 4
        ),
        "sql_statements_per_event": round(
            append["statements_per_event"] + applied["statements_per_event"], 4
        ),
        "statements_by_compile_cache": applied["statements_by_compile_cache"],
        "lock_ms_per_event": round(
            applied["redis_lock_ms_per_batch"] * applied["batches"] / max(1, applied["events"]), 4
        ),
    }
