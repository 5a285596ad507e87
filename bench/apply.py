"""When events became visible, read from the router's tables: applied rate, apply lag, burst.

The router acknowledges an event once it is committed in its durable log
(`router.events`, `state = 'pending'`, `stored_at_ms` the append's time) and
applies it (makes it visible to readers) afterwards, in batches: the apply
stage sets `state = 'applied'` and `applied_at_ms` in the batch's transaction.
Three figures need both moments per event: events/s applied, the lag from log
commit to visible, and the time until a burst is all visible. They are read by
one function, `visibility`; everything else here works on its
`(logged_ms, visible_ms)` pairs. The backlog during a window is sampled live
(`sample_pending`: entries whose state is still `pending`), not reconstructed.

`apply_statements_per_event` is the figure of the in-process measurement
(bench/inproc.py): statements SQLAlchemy sent while `Applier.run_once` applied a
batch of 500 mixed events, divided by the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from bench.db import plain_url
from bench.driver import percentile

# Which columns of `router.events e` (one row per distinct event, every kind) say when
# the event's log entry was appended and when it became visible (NULL: not yet). Both
# are the router's clock (epoch ms): `stored_at_ms` is taken as the group commit starts,
# `applied_at_ms` as the apply batch's transaction starts — each a few ms before its
# commit, so the lag is commit to commit within the two statements' run time.
LOGGED_AT = "e.stored_at_ms"
VISIBLE_AT = "CASE WHEN e.state = 'applied' THEN e.applied_at_ms END"
BASIS = (
    "router.events: logged = stored_at_ms (group commit of the append), visible ="
    " applied_at_ms where state = 'applied' (the apply batch's transaction)"
)

Visible = tuple[int, int | None]  # (logged at, visible at or None), epoch ms
Sample = tuple[int, int]  # (epoch ms, pending entries)


def visibility(
    url: str, since_ms: int, conversation: tuple[str, str] | None = None
) -> list[Visible]:
    """(logged_ms, visible_ms or None) of every event logged at or after `since_ms`
    (epoch ms), optionally of one conversation (page id, user id) only."""
    sql = f"SELECT {LOGGED_AT}, {VISIBLE_AT} FROM router.events e WHERE {LOGGED_AT} >= %s"
    params: list[object] = [since_ms]
    if conversation is not None:
        sql += " AND e.page_id = %s AND e.user_id = %s"
        params += list(conversation)
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        rows = conn.execute(sql, params).fetchall()
    return [(int(logged), None if visible is None else int(visible)) for logged, visible in rows]


async def sample_pending(url: str, stop: asyncio.Event, period_s: float = 0.5) -> list[Sample]:
    """`(epoch ms, pending)` every `period_s` until `stop` is set: the log entries not
    applied yet (`state = 'pending'`, leased or not), counted on the router's table."""
    samples: list[Sample] = []
    async with await psycopg.AsyncConnection.connect(plain_url(url), autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT count(*) FROM router.events WHERE state = 'pending'"
            )
            row = await cursor.fetchone()
            samples.append((int(time.time() * 1000), int(row[0]) if row else 0))
            if stop.is_set():
                return samples
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)


def apply_statements_per_event(in_process: dict[str, Any]) -> dict[str, Any]:
    """SQL statements per event on the apply path, batch of 500 mixed events: the first
    batch of bench/inproc.py's apply figure (new conversations, the costlier case)."""
    applied = (in_process or {}).get("apply")
    if not applied:
        reason = (in_process or {}).get("error", "no in-process figures in this run")
        return {"figure": None, "note": f"not measured: {reason}"}
    return {
        "figure": applied["first_batch_statements_per_event"],
        "statements_per_batch": applied["statements_per_batch"],
        "all_batches": applied["statements_per_event"],
        "append_statements_per_event": in_process["append"]["statements_per_event"],
        "note": (
            f"in-process: {applied['per_round'][0]['statements']} statements"
            f" (SQLAlchemy after_cursor_execute) while Applier.run_once applied"
            f" {applied['per_round'][0]['applied']} mixed events in"
            f" {applied['per_round'][0]['batches']} batch(es) of {applied['batch']};"
            f" {applied['statements_per_event']:g} over {applied['rounds']} rounds;"
            f" the append: {in_process['append']['statements_per_event']:g} per event"
            f" ({in_process['append']['events_per_commit']:g} events per group commit)"
        ),
    }


def batching(url: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    """How the events logged in [start_ms, end_ms] were grouped: ≈ group commits (distinct
    `stored_at_ms`: one clock reading per commit) and ≈ apply batches (distinct
    `applied_at_ms`: one per batch). Two commits or batches in the same millisecond count
    once, so both are lower bounds and the events per commit or batch upper bounds."""
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT stored_at_ms),"
            " count(DISTINCT applied_at_ms) FILTER (WHERE state = 'applied'),"
            " count(*) FILTER (WHERE state = 'applied')"
            " FROM router.events WHERE stored_at_ms BETWEEN %s AND %s",
            (start_ms, end_ms),
        ).fetchone()
    events, commits, batches, applied = (int(v or 0) for v in (row or (0, 0, 0, 0)))
    return {
        "events": events,
        "group_commits": commits,
        "events_per_commit": round(events / commits, 2) if commits else None,
        "apply_batches": batches,
        "events_per_batch": round(applied / batches, 2) if batches else None,
    }


def wall_ms(monotonic_s: float) -> int:
    """A `time.monotonic()` instant (the driver's clock) as epoch ms (the router's)."""
    return int((monotonic_s + time.time() - time.monotonic()) * 1000)


async def wait_visible(
    url: str,
    since_ms: int,
    *,
    until_ms: int | None = None,
    expected: int | None = None,
    conversation: tuple[str, str] | None = None,
    timeout_s: float = 10.0,
) -> list[Visible]:
    """`visibility`, polled until every event logged up to `until_ms` is visible (and at
    least `expected` are), or `timeout_s` passed; the last reading either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await asyncio.to_thread(visibility, url, since_ms, conversation)
        logged = [r for r in rows if until_ms is None or r[0] <= until_ms]
        enough = expected is None or sum(1 for r in logged if r[1] is not None) >= expected
        if (enough and all(r[1] is not None for r in logged)) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


def lag_ms(rows: Sequence[Visible], start_ms: int, end_ms: int) -> dict[str, Any]:
    """Log commit → visible of the events logged in [start_ms, end_ms]."""
    window = [r for r in rows if start_ms <= r[0] <= end_ms]
    lags = sorted(float(v - logged) for logged, v in window if v is not None)
    return {
        "events": len(window),
        "not_visible": sum(1 for r in window if r[1] is None),
        "p50": percentile(lags, 50),
        "p99": percentile(lags, 99),
        "max": lags[-1] if lags else 0.0,
        "basis": BASIS,
    }


def applied_rate(
    rows: Sequence[Visible], start_ms: int, end_ms: int, samples: Sequence[Sample] = ()
) -> dict[str, Any]:
    """Events that became visible in [start_ms, end_ms] per second, and whether the
    backlog grew from the window's middle to its end: by the live `samples` of pending
    entries when there are any (the median of those around the middle against the
    median of the last fifth), else as reconstructed from the rows."""
    seconds = max(0.001, (end_ms - start_ms) / 1000)
    middle = (start_ms + end_ms) // 2

    def pending(at: int) -> int:
        return sum(1 for logged, v in rows if logged <= at and (v is None or v > at))

    visible = sum(1 for _, v in rows if v is not None and start_ms <= v <= end_ms)
    second_half = sum(1 for logged, _ in rows if middle < logged <= end_ms)
    window = [(t, n) for t, n in samples if start_ms <= t <= end_ms]
    span = end_ms - start_ms
    # Samples within a tenth of the window (at least 1 s) of its middle; its last fifth.
    around_middle = [n for t, n in window if abs(t - middle) <= max(1000, span // 10)]
    last_fifth = [n for t, n in window if t >= end_ms - max(1000, span // 5)]
    if around_middle and last_fifth:
        at_middle = int(percentile(sorted(float(n) for n in around_middle), 50))
        at_end = int(percentile(sorted(float(n) for n in last_fifth), 50))
        basis = "sampled: router.events where state = 'pending', every 0.5 s"
    else:
        at_middle, at_end = pending(middle), pending(end_ms)
        basis = "reconstructed from the rows (no samples in the window)"
    return {
        "events_per_s": round(visible / seconds, 1),
        "seconds": round(seconds, 3),
        "pending_at_middle": at_middle,
        "pending_at_end": at_end,
        "pending_max": max((n for _, n in window), default=None),
        # Growing: the backlog rose by more than 2% of what was logged meanwhile (and 10).
        "pending_growing": at_end > at_middle + max(10, second_half // 50),
        "pending_basis": basis,
        "pending_samples": [[round((t - start_ms) / 1000, 1), n] for t, n in window],
        "pending_from_rows": {"at_middle": pending(middle), "at_end": pending(end_ms)},
        "basis": BASIS,
    }
