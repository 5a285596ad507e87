"""The load generator: pre-built bodies POSTed from processes of their own.

Each driver process runs a small asyncio HTTP/1.1 client (keep-alive
connections, no parsing beyond the status line and Content-Length) so the
load costs little CPU and never shares a GIL with the services it measures.
Two modes: open loop (bodies sent on a fixed schedule whatever the answers,
the way Meta delivers) and closed loop (N senders, each waiting for its answer).
Times are `time.monotonic()`, which is one clock for every process on Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.bodies import Body

REQUEST_TIMEOUT_S = 10.0
CONNECT_FAILED = 0
TIMED_OUT = -1

# One answer: scheduled, sent and answered (monotonic seconds), HTTP status, events carried,
# and the body's index in the list that was sent.
Result = tuple[float, float, float, int, int, int]


class _Connection:
    """One keep-alive HTTP/1.1 connection to a gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, host: str, body: Body) -> tuple[int, bool]:
        """Sends one POST; returns the status and whether the connection can be reused."""
        head = (
            f"POST {body.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: {body.signature}\r\nContent-Length: {len(body.data)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body.data)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers[9:12])
        lowered = headers.lower()
        length = 0
        marker = lowered.find(b"\r\ncontent-length:")
        if marker >= 0:
            end = lowered.index(b"\r\n", marker + 2)
            length = int(lowered[marker + 17 : end])
        if length:
            await self.reader.readexactly(length)
        return status, b"\r\nconnection: close" not in lowered

    def close(self) -> None:
        self.writer.close()


class _Pool:
    """Idle connections per target, opened on demand up to a cap."""

    def __init__(self, targets: Sequence[tuple[str, int]], limit: int) -> None:
        self._targets = targets
        self._idle: dict[int, list[_Connection]] = {i: [] for i in range(len(targets))}
        self._slots = asyncio.Semaphore(limit)

    async def post(self, target: int, body: Body) -> int:
        host, port = self._targets[target]
        async with self._slots:
            idle = self._idle[target]
            # A kept-alive connection the server closed while it sat idle (uvicorn's
            # keep-alive timeout) fails before any answer: retry once on a new one.
            for reused in (bool(idle), False):
                conn = idle.pop() if reused else None
                try:
                    if conn is None:
                        conn = await _Connection.open(host, port)
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        status, reusable = await conn.post(host, body)
                except TimeoutError:
                    if conn is not None:
                        conn.close()
                    return TIMED_OUT
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    if conn is not None:
                        conn.close()
                    if reused:
                        continue
                    return CONNECT_FAILED
                if reusable:
                    idle.append(conn)
                else:
                    conn.close()
                return status
            return CONNECT_FAILED

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()


async def _run(job: dict[str, Any]) -> list[Result]:
    targets: list[tuple[str, int]] = job["targets"]
    bodies: list[tuple[int, Body]] = job["bodies"]  # (global index, body)
    pool = _Pool(targets, job["connections"])
    results: list[Result] = []
    t0: float = job["t0"]

    async def one(index: int, body: Body, scheduled: float) -> None:
        sent = time.monotonic()
        status = await pool.post(index % len(targets), body)
        results.append((scheduled, sent, time.monotonic(), status, body.events, index))

    delay = t0 - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        if job["rate"]:
            interval = 1.0 / job["rate"]
            tasks = []
            for index, body in bodies:
                scheduled = t0 + index * interval
                wait = scheduled - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(one(index, body, scheduled)))
            await asyncio.gather(*tasks)
        else:
            queue = list(reversed(bodies))
            stop_at = t0 + job["duration"] if job["duration"] else float("inf")

            async def sender() -> None:
                while queue and time.monotonic() < stop_at:
                    index, body = queue.pop()
                    await one(index, body, time.monotonic())

            await asyncio.gather(*(sender() for _ in range(job["concurrency"])))
    finally:
        pool.close()
    return results


def _worker(job: dict[str, Any]) -> list[Result]:
    """Entry point of a driver process."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(_run(job))
    return uvloop.run(_run(job))


@dataclass
class Outcome:
    """Every answer of one run, and the figures derived from them."""

    results: list[Result]

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r[3] == 200]

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[str(r[3])] = counts.get(str(r[3]), 0) + 1
        return dict(sorted(counts.items()))

    def not_ok(self) -> list[int]:
        """Indices of the bodies that got no 200."""
        return sorted(r[5] for r in self.results if r[3] != 200)

    @property
    def events_acked(self) -> int:
        return sum(r[4] for r in self.ok)

    @property
    def started(self) -> float:
        return min(r[0] for r in self.results)

    @property
    def finished(self) -> float:
        return max(r[2] for r in self.results)

    def latency_ms(self) -> dict[str, float]:
        """ACK latency of the 200s (sent → answered), and the driver's own lag behind schedule."""
        ack = sorted((r[2] - r[1]) * 1000 for r in self.ok)
        lag = sorted((r[1] - r[0]) * 1000 for r in self.results)
        return {
            "p50": percentile(ack, 50),
            "p95": percentile(ack, 95),
            "p99": percentile(ack, 99),
            "max": ack[-1] if ack else 0.0,
            "driver_lag_p99": percentile(lag, 99),
        }


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return round(ordered[rank], 3)


class Drivers:
    """A pool of driver processes, kept warm across the benchmark's steps."""

    def __init__(self, processes: int = 2) -> None:
        self._n = processes
        self._pool = multiprocessing.get_context("spawn").Pool(processes)

    def run(
        self,
        targets: Sequence[str],
        bodies: Sequence[Body],
        *,
        rate_rps: float | None = None,
        concurrency: int = 0,
        duration_s: float | None = None,
        connections: int = 256,
    ) -> Outcome:
        """Sends `bodies` round-robin over `targets` (http://host:port): at `rate_rps`
        requests per second (open loop) or with `concurrency` senders (closed loop)."""
        hosts = []
        for target in targets:
            host, _, port = target.removeprefix("http://").rstrip("/").partition(":")
            hosts.append((host, int(port)))
        t0 = time.monotonic() + 0.3
        per_process = max(1, connections // self._n)
        jobs = [
            {
                "targets": hosts,
                "bodies": [(i, b) for i, b in enumerate(bodies) if i % self._n == w],
                "rate": rate_rps or None,
                "concurrency": max(1, concurrency // self._n),
                "duration": duration_s,
                "connections": per_process,
                "t0": t0,
            }
            for w in range(self._n)
        ]
        results: list[Result] = []
        for part in self._pool.map(_worker, jobs):
            results.extend(part)
        return Outcome(results)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.close()
            self._pool.join()

    def __enter__(self) -> Drivers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
