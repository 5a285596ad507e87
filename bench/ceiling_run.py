"""The ceiling measured in the run: bench.ceiling as a process, loaded like Pagewire is.

Same PostgreSQL (a table of its own in the run's database), same bodies (signed
with the same secret), same closed-loop generator as Pagewire's throughput probe
(wrk when installed, else the Python driver). A sweep over connection counts;
`events_per_s` is the best level whose ACK p99 stayed under 1 s with nothing but
200s — events counted from the items of the committed bodies, not POSTs. After
each level every 200 is checked against the table: the app's own count of 200s
must equal the rows committed, and the driver's 200s cannot exceed them (it may
have stopped reading a few answers whose rows are in).

The full run adds, for the record: the same sweep's best level by the Python
driver (is the driver what bounds it?), ACK latency at 1,000 and 5,000 events/s
offered open loop, and the app without storage (HTTP, signature and JSON alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench import ceiling
from bench.bodies import Body

if TYPE_CHECKING:
    from bench.run import Bench

ACK_P99_LIMIT_MS = 1000.0


async def _stats(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        reply = await client.get(f"{base}/stats")
        reply.raise_for_status()
        return dict(reply.json())


def _cpu_s(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


async def _level(
    bench: Bench, name: str, url: str, bodies: list[Body], connections: int, python: bool = False
) -> dict[str, Any]:
    """One closed-loop level against the running ceiling, checked against its table."""
    base = bench.suite.url(name)
    pid = bench.suite.procs[name].pid
    stats_before = await _stats(base)
    rows_before, events_before = await asyncio.to_thread(ceiling.stored, url)
    cpu_before = _cpu_s(pid)
    result = await bench.closed(
        base, bodies, connections, bench.plan.ceiling_s, unique=False, python=python
    )
    cpu = _cpu_s(pid) - cpu_before
    stats_after = await _stats(base)
    rows_after, events_after = await asyncio.to_thread(ceiling.stored, url)
    rows, events = rows_after - rows_before, events_after - events_before
    app_acked = stats_after["acked_posts"] - stats_before["acked_posts"]
    seconds = result["seconds"]
    result.update(
        {
            "connections": connections,
            "posts_committed": rows,
            "events_committed": events,
            "posts_per_s": round(result["posts_acked"] / seconds, 1) if seconds else 0.0,
            # Events of the committed bodies whose 200 was read within the window.
            "events_per_s": round(events * result["answered_fraction"] / seconds, 1)
            if seconds
            else 0.0,
            "commits": stats_after["commits"] - stats_before["commits"],
            "cpu_cores_ceiling": round(cpu / seconds, 2) if seconds else 0.0,
            # Every 200 a committed row: the app's count exactly; the driver's can only be
            # short of the rows by the answers in flight when it stopped.
            "every_200_committed": app_acked == rows
            and result["posts_acked"] <= rows <= result["posts_acked"] + connections,
        }
    )
    result["rows_per_commit"] = round(rows / result["commits"], 1) if result["commits"] else 0.0
    if not stats_after["stores"]:
        # Without storage: what was answered is what counts.
        result["events_per_s"] = round(
            (stats_after["acked_events"] - stats_before["acked_events"]) / seconds, 1
        )
        result["every_200_committed"] = None
    return result


def _held(level: dict[str, Any]) -> bool:
    others = sum(n for status, n in level["statuses"].items() if status != "200")
    return level["ack_ms"]["p99"] < ACK_P99_LIMIT_MS and others == 0


async def _start(bench: Bench, name: str, url: str, *, store: bool) -> None:
    await bench.suite.start(
        "ceiling",
        name=name,
        module="bench.ceiling",
        PAGEWIRE_CEILING_PORT=str(bench.suite.free_port()),
        PAGEWIRE_CEILING_DATABASE_URL=url,
        PAGEWIRE_CEILING_STORE="1" if store else "0",
    )


async def measure(bench: Bench, url: str) -> dict[str, Any]:
    """The ceiling's figures (see the module docstring)."""
    plan = bench.plan
    await asyncio.to_thread(ceiling.prepare, url)
    bodies = bench.generator.bodies(plan.ceiling_bodies)
    out: dict[str, Any] = {
        "app": "bench/ceiling.py: uvicorn (uvloop, httptools), bare ASGI, signature + JSON,"
        " group commit of the raw body (one INSERT … SELECT FROM unnest per commit)",
        "generator": bench.closed_loop_generator,
        "mean_events_per_post": round(sum(b.events for b in bodies) / len(bodies), 3),
        "seconds_per_level": plan.ceiling_s,
    }
    name = "ceiling"
    await _start(bench, name, url, store=True)
    try:
        if plan.ceiling_extras:  # a warm-up: the INSERT prepared, buffers grown
            await bench.closed(bench.suite.url(name), bodies[:4000], 16, 1, unique=False)
        levels = [await _level(bench, name, url, bodies, c) for c in plan.ceiling_connections]
        out["levels"] = levels
        held = [lv for lv in levels if _held(lv)]
        best = max(held, key=lambda lv: lv["events_per_s"], default=None)
        out["events_per_s"] = best["events_per_s"] if best else 0.0
        out["posts_per_s"] = best["posts_per_s"] if best else 0.0
        out["ack_ms"] = best["ack_ms"] if best else None
        out["connections"] = best["connections"] if best else None
        out["every_200_committed"] = all(lv["every_200_committed"] for lv in levels)
        if plan.ceiling_extras and best:
            if bench.closed_loop_generator.startswith("wrk"):
                out["python_driver"] = await _level(
                    bench, name, url, bodies, best["connections"], python=True
                )
                out["every_200_committed"] &= out["python_driver"]["every_200_committed"]
            out["open_loop"] = {
                str(eps): await bench.open_loop(bench.suite.url(name), eps, plan.rate_s)
                for eps in plan.rates
            }
        out["memory"] = bench.suite.procs[name].memory_mb()
    finally:
        await bench.suite.stop(name)
    if plan.ceiling_extras and out.get("connections"):
        name = "ceiling-no-storage"
        await _start(bench, name, url, store=False)
        try:
            await bench.closed(bench.suite.url(name), bodies[:4000], 16, 1, unique=False)
            out["without_storage"] = await _level(bench, name, url, bodies, out["connections"])
        finally:
            await bench.suite.stop(name)
    return out
