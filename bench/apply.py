"""When events became visible, read from the router's tables: applied rate, apply lag, burst.

Issue 13's router acknowledges an event once it is committed in a durable log and
applies it (makes it visible to readers) afterwards, in batches. Three figures
need both moments per event: events/s applied, the lag from log commit to
visible, and the time until a burst is all visible. They are read from the
bench's PostgreSQL database by one function, `visibility`, whose two columns are
the only thing to switch when the router's schema changes; everything else here
works on its `(logged_ms, visible_ms)` pairs.

`apply_statements_per_event` is the hook for the SQL statements per event on the
apply path: a stub until the router exposes a counter (or PostgreSQL runs with
`pg_stat_statements` preloaded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from bench.db import plain_url
from bench.driver import percentile

# Which columns of `router.events e` (one row per distinct event, every kind) say when
# the event's log entry was committed and when it became visible. Today's router writes
# the row and applies the event in the same transaction, so both are its stored_at_ms.
# After the event-log rewrite, e.g. "e.stored_at_ms" and "NULLIF(e.applied_at_ms, 0)"
# (NULL: logged, not applied yet) — the columns the router's author names.
LOGGED_AT = "e.stored_at_ms"
VISIBLE_AT = "e.stored_at_ms"
BASIS = (
    "router.events.stored_at_ms for both: today's router logs and applies an event in one"
    " transaction, so its apply lag is 0 by construction"
)

Visible = tuple[int, int | None]  # (logged at, visible at or None), epoch ms


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


def apply_statements_per_event(url: str) -> dict[str, Any]:
    """SQL statements per event on the apply path (a batch of 500 mixed events).

    A stub: it needs either a statement counter the router exposes for its apply
    path, or `pg_stat_statements` (preloaded, which needs a PostgreSQL restart,
    so the bench never turns it on for a shared server) plus a way to tell the
    apply path's statements from the ACK path's. Returns `figure: None` and why.
    """
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
    preloaded = "pg_stat_statements" in (row[0] if row else "")
    return {
        "figure": None,
        "note": "not measured: needs the router's apply-path statement counter"
        + (
            " (pg_stat_statements is preloaded here and could serve)"
            if preloaded
            else " (pg_stat_statements is not in shared_preload_libraries here)"
        ),
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


def applied_rate(rows: Sequence[Visible], start_ms: int, end_ms: int) -> dict[str, Any]:
    """Events that became visible in [start_ms, end_ms] per second, and whether the
    backlog (logged, not visible) grew from the window's middle to its end."""
    seconds = max(0.001, (end_ms - start_ms) / 1000)
    middle = (start_ms + end_ms) // 2

    def pending(at: int) -> int:
        return sum(1 for logged, v in rows if logged <= at and (v is None or v > at))

    visible = sum(1 for _, v in rows if v is not None and start_ms <= v <= end_ms)
    second_half = sum(1 for logged, _ in rows if middle < logged <= end_ms)
    at_middle, at_end = pending(middle), pending(end_ms)
    return {
        "events_per_s": round(visible / seconds, 1),
        "seconds": round(seconds, 3),
        "pending_at_middle": at_middle,
        "pending_at_end": at_end,
        # Growing: the backlog rose by more than 1% of what was logged meanwhile (and 10).
        "pending_growing": at_end > at_middle + max(10, second_half // 100),
        "basis": BASIS,
    }
