"""The floor, measured in the same run on the same servers: what PostgreSQL and Redis can do
with nothing of Pagewire in the way.

- PostgreSQL: single-row `INSERT … ON CONFLICT DO NOTHING`, each committed on its own,
  from 8 connections — by pgbench (a C client: the database's own rate) and by one
  asyncio psycopg process (what a Python process like the router can push at best).
- Redis: the round trip of `SET key token NX PX ttl`, the lock's acquire, one at a time.
"""

from __future__ import annotations

import asyncio
import glob
import multiprocessing
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis.asyncio as aioredis

from bench.db import plain_url
from bench.driver import percentile

TABLE = "public.bench_floor"
_SCRIPT = (
    "\\set id random(1, 9000000000000000)\n"
    f"INSERT INTO {TABLE} (id, v) VALUES (:id, 'floor') ON CONFLICT (id) DO NOTHING;\n"
)


def _prepare(url: str) -> None:
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, v text)")
        conn.execute(f"TRUNCATE {TABLE}")


def pgbench_binary() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return candidates[-1] if candidates else None


def pgbench_floor(url: str, seconds: float, connections: int = 8) -> float | None:
    """Committed single-row upserts per second by pgbench, or None without pgbench."""
    binary = pgbench_binary()
    if binary is None:
        return None
    _prepare(url)
    parts = urlsplit(plain_url(url))
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(_SCRIPT)
    try:
        out = subprocess.run(
            [
                binary,
                "-n",
                "-h",
                parts.hostname or "127.0.0.1",
                "-p",
                str(parts.port or 5432),
                "-U",
                parts.username or "postgres",
                "-c",
                str(connections),
                "-j",
                "2",
                "-T",
                str(max(1, round(seconds))),
                "-f",
                script.name,
                parts.path.lstrip("/"),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env={"PGPASSWORD": parts.password or "", "PATH": "/usr/bin:/bin"},
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip() or out.stdout.strip()}")
    return float(match.group(1))


async def _psycopg_floor(url: str, seconds: float, connections: int) -> float:
    conns = [
        await psycopg.AsyncConnection.connect(plain_url(url), autocommit=True)
        for _ in range(connections)
    ]
    done = 0
    stop = time.monotonic() + seconds
    sql = f"INSERT INTO {TABLE} (id, v) VALUES (%s, 'floor') ON CONFLICT (id) DO NOTHING"

    async def loop(conn: psycopg.AsyncConnection, start: int) -> None:
        nonlocal done
        n = start
        while time.monotonic() < stop:
            await conn.execute(sql, (n,))
            n += connections
            done += 1

    began = time.monotonic()
    try:
        await asyncio.gather(*(loop(c, i) for i, c in enumerate(conns)))
    finally:
        for conn in conns:
            await conn.close()
    return done / (time.monotonic() - began)


def _psycopg_worker(url: str, seconds: float, connections: int) -> float:
    return asyncio.run(_psycopg_floor(url, seconds, connections))


def psycopg_floor(url: str, seconds: float, connections: int = 8) -> float:
    """The same upserts from one asyncio psycopg process with `connections` connections."""
    _prepare(url)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return float(pool.apply(_psycopg_worker, (url, seconds, connections)))


async def redis_set_nx(url: str, prefix: str, count: int) -> dict[str, float]:
    """Round trip of `SET NX PX`, one after another, in microseconds."""
    client = aioredis.from_url(url)
    samples = []
    try:
        for i in range(count):
            began = time.perf_counter()
            await client.set(f"{prefix}:floor:{i}", "token", nx=True, px=2000)
            samples.append((time.perf_counter() - began) * 1e6)
    finally:
        await client.aclose()
    samples.sort()
    return {
        "count": count,
        "p50_us": percentile(samples, 50),
        "p99_us": percentile(samples, 99),
        "ops_per_s_one_client": round(count / (sum(samples) / 1e6), 1),
    }
