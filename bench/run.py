"""The benchmark run: floor, ceiling, the router in-process, throughput, latency at fixed
rates, applied rate, one-conversation burst, the busy-retry ablation, the SendMessage lock
wait ablation, resources, and the targets.

Everything runs against real processes on this machine's PostgreSQL and Redis,
in a database and key prefix of the run's own (dropped afterwards). Pages are
connected through the fake Graph API with the `pagewire` CLI, as an operator
would. What counts as committed is read from PostgreSQL, never from the
gateway's answers alone; what counts as visible, from the router's tables
(bench/apply.py). Closed-loop figures — the ceiling's and Pagewire's — come from
the same generator: wrk when installed, else the Python driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench import apply, burst, ceiling_run, db, floor, profile, targets, wrk
from bench.bodies import FACEBOOK_PAGES, INSTAGRAM_PAGES, Body, Generator
from bench.driver import Drivers, Outcome
from bench.procs import APP_SECRET, Suite
from pagewire import fakegraph
from services.tokens.vault import generate_keyring

SCHEMA_VERSION = 2
ACK_P99_LIMIT_MS = 1000.0
TARGET_LATENCY_EPS = targets.TARGET_LATENCY_EPS
ROUTERS = ("router1", "router2")


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does: `full` for `make bench`, `quick` for `make test`."""

    name: str
    floor_s: float
    warmup_bodies: int
    probe_s: float
    probe_concurrency: int
    steps: tuple[float, ...]  # open-loop rates, as fractions of the closed-loop probe
    step_s: float
    latency_s: float
    burst_events: int
    burst_posts: int
    burst_repeats: int
    ablation_events: int
    redis_samples: int
    max_steps: int
    ceiling_connections: tuple[int, ...]  # closed-loop levels of the ceiling's sweep
    ceiling_s: float
    ceiling_bodies: int  # distinct bodies, cycled (the ceiling stores duplicates too)
    ceiling_extras: bool  # Python driver, open loop and no-storage on the ceiling too
    rates: tuple[int, ...]  # explicit offered events/s for ACK latency and apply lag
    rate_s: float
    applied_s: float  # the applied-rate step (the target asks for 20 s)


FULL = Plan(
    "full",
    floor_s=5,
    warmup_bodies=400,
    probe_s=8,
    probe_concurrency=32,
    steps=(0.6, 0.8, 0.9, 1.0, 1.1, 1.25),
    step_s=8,
    latency_s=12,
    burst_events=500,
    burst_posts=20,
    burst_repeats=3,
    ablation_events=500,
    redis_samples=2000,
    max_steps=12,
    ceiling_connections=(32, 64, 128),
    ceiling_s=6,
    ceiling_bodies=40_000,
    ceiling_extras=True,
    rates=(1000, 5000),
    rate_s=8,
    applied_s=20,
)
QUICK = Plan(
    "quick",
    floor_s=1,
    warmup_bodies=40,
    probe_s=1.5,
    probe_concurrency=16,
    steps=(0.7,),
    step_s=1.5,
    latency_s=1.5,
    burst_events=100,
    burst_posts=10,
    burst_repeats=1,
    ablation_events=100,
    redis_samples=200,
    max_steps=1,
    ceiling_connections=(64,),
    ceiling_s=2,
    ceiling_bodies=8_000,
    ceiling_extras=False,
    rates=(1000,),  # 5,000/s overloads today's router for seconds: full runs only
    rate_s=0.5,
    applied_s=2,
)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


def machine(admin_url: str, redis_url: str) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    with psycopg.connect(admin_url, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "shared_buffers")
        }
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(memory_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg,
        "postgresql_settings": settings,
        "redis": redis_version,
    }


class Bench:
    """One run against one suite of processes."""

    def __init__(self, plan: Plan, suite: Suite, drivers: Drivers, database_url: str) -> None:
        self.plan = plan
        self.suite = suite
        self.drivers = drivers
        self.url = database_url
        self.generator = Generator(APP_SECRET, seed=secrets.randbits(32))
        self.profile_s = 0.0
        self.mean_events = sum(b.events for b in self.generator.bodies(400)) / 400
        self.closed_loop_generator = (
            "wrk (C, one thread)" if wrk.binary() else "Python driver (wrk not installed)"
        )
        self.ceiling_posts_per_s = 0.0  # set once the ceiling is measured: sizes the probe

    # -- helpers --------------------------------------------------------------------------

    async def send(self, targets: list[str], bodies: list[Body], **how: Any) -> Outcome:
        return await asyncio.to_thread(self.drivers.run, targets, bodies, **how)

    async def closed(
        self,
        target: str,
        bodies: list[Body],
        connections: int,
        duration_s: float,
        *,
        unique: bool = True,
        python: bool = False,
    ) -> dict[str, Any]:
        """A closed loop of `connections` for `duration_s`: by wrk when installed (and not
        `python`), else by the Python driver; the same result shape either way."""
        if wrk.binary() and not python:
            return await asyncio.to_thread(
                wrk.closed_loop,
                target,
                bodies,
                connections=connections,
                duration_s=duration_s,
                unique=unique,
            )
        if not unique:
            # The driver stops when its list runs out (wrk cycles): enough for 12,000/s,
            # about twice what it can send.
            bodies = bodies * max(1, math.ceil(12_000 * duration_s / len(bodies)))
        outcome = await self.send([target], bodies, concurrency=connections, duration_s=duration_s)
        seconds = outcome.finished - outcome.started
        return {
            "generator": f"Python driver, 2 processes, {connections} concurrent POSTs",
            "seconds": round(seconds, 3),
            "posts_answered": len(outcome.results),
            "posts_sent": len(outcome.results),
            "events_sent": sum(r[4] for r in outcome.results),
            "events_acked_estimate": outcome.events_acked,
            "posts_acked": len(outcome.ok),
            "acked_posts_per_s": round(len(outcome.ok) / seconds, 1) if seconds else 0.0,
            "bodies_exhausted": len(outcome.results) >= len(bodies),
            "answered_fraction": 1.0,
            "statuses": outcome.statuses(),
            "ack_ms": outcome.latency_ms(),
        }

    async def open_loop(self, target: str, offered_eps: float, seconds: float) -> dict[str, Any]:
        """Bodies on a fixed schedule at `offered_eps` events/s; what was answered (no
        database reading: for the ceiling, whose table is checked per level)."""
        rate_rps = offered_eps / self.mean_events
        bodies = self.generator.bodies(max(1, int(rate_rps * seconds)))
        outcome = await self.send([target], bodies, rate_rps=rate_rps)
        elapsed = outcome.finished - outcome.started
        return {
            "offered_events_per_s": offered_eps,
            "posts": len(outcome.results),
            "events_acked": outcome.events_acked,
            "acked_events_per_s": round(outcome.events_acked / elapsed, 1) if elapsed else 0.0,
            "statuses": outcome.statuses(),
            "ack_ms": outcome.latency_ms(),
        }

    def measured(self, outcome: Outcome, committed: int, offered_eps: float | None) -> dict:
        elapsed = outcome.finished - outcome.started
        return {
            "window_ms": [apply.wall_ms(outcome.started), apply.wall_ms(outcome.finished)],
            "offered_events_per_s": round(offered_eps, 1) if offered_eps else None,
            "posts": len(outcome.results),
            "events_sent": sum(r[4] for r in outcome.results),
            "events_acked": outcome.events_acked,
            "events_committed": committed,
            "seconds": round(elapsed, 3),
            "committed_events_per_s": round(committed / elapsed, 1) if elapsed > 0 else 0.0,
            "statuses": outcome.statuses(),
            "ack_ms": outcome.latency_ms(),
        }

    async def load(
        self, bodies: list[Body], offered_eps: float | None = None, **how: Any
    ) -> dict[str, Any]:
        """Sends and counts what PostgreSQL committed meanwhile (every answer is in)."""
        before = db.stored_events(self.url)
        outcome = await self.send([self.suite.gateway_url], bodies, **how)
        committed = db.stored_events(self.url) - before
        return self.measured(outcome, committed, offered_eps)

    def cpu_seconds(self) -> dict[str, float]:
        out = {}
        for name, proc in self.suite.procs.items():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    # -- the figures ----------------------------------------------------------------------

    async def probe(self, warmup_posts_per_s: float) -> dict[str, Any]:
        """The closed-loop probe through the gateway, by the ceiling's generator, with
        bodies that are never sent twice (Pagewire would count a resend as a duplicate)."""
        plan = self.plan
        # Enough distinct bodies for the probe: 3× the warm-up's rate (8 concurrent), at
        # least 1,500/s, at most 1.25× the ceiling's POSTs/s; twice as many if they ran out.
        rate = max(1500.0, 3 * warmup_posts_per_s)
        if self.ceiling_posts_per_s:
            rate = max(1500.0, min(rate, 1.25 * self.ceiling_posts_per_s))
        for attempt in range(2):
            bodies = self.generator.bodies(int(rate * plan.probe_s * 2**attempt))
            before = db.stored_events(self.url)
            result = await self.closed(
                self.suite.gateway_url, bodies, plan.probe_concurrency, plan.probe_s
            )
            await self.settle()
            committed = db.stored_events(self.url) - before
            if not result["bodies_exhausted"]:
                break
        seconds = result["seconds"]
        # What the POSTs answered within the window committed (not those cut off in flight).
        committed = round(committed * result["answered_fraction"])
        return {
            "offered_events_per_s": None,
            "generator": result["generator"],
            "posts": result["posts_answered"],
            "events_sent": result["events_sent"],
            "events_acked": result["events_acked_estimate"],
            "events_committed": committed,
            "seconds": seconds,
            "committed_events_per_s": round(committed / seconds, 1) if seconds else 0.0,
            "bodies_exhausted": result["bodies_exhausted"],
            "statuses": result["statuses"],
            "ack_ms": result["ack_ms"],
        }

    async def settle(self, quiet_s: float = 0.5, timeout_s: float = 20.0) -> None:
        """Waits until the router's event count stops moving (after an overload or a
        closed loop cut off mid-flight), so the next figure starts from rest."""
        deadline = time.monotonic() + timeout_s
        last = db.stored_events(self.url)
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet_s)
            now = db.stored_events(self.url)
            if now == last:
                return
            last = now

    async def throughput(self, warmup: dict[str, Any]) -> dict[str, Any]:
        """A closed-loop probe for the capacity, then open-loop steps around it; the
        figure is the highest committed rate whose ACK p99 stayed under 1 s."""
        plan = self.plan
        mean_events = self.mean_events
        cpu_before = self.cpu_seconds()
        began = time.monotonic()
        warmup_rate = warmup["posts"] / warmup["seconds"] if warmup["seconds"] else 0.0
        probe = await self.probe(warmup_rate)
        wall = time.monotonic() - began
        cpu_after = self.cpu_seconds()
        probe["mode"] = f"closed loop, {plan.probe_concurrency} concurrent POSTs"
        probe["cpu_cores"] = {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / wall, 2)
            for name in cpu_after
        }
        capacity = probe["committed_events_per_s"]
        steps = []
        fractions = list(plan.steps)
        while fractions:
            fraction = fractions.pop(0)
            offered = capacity * fraction
            rate_rps = offered / mean_events
            bodies = self.generator.bodies(max(1, int(rate_rps * plan.step_s)))
            step = await self.load(bodies, offered, rate_rps=rate_rps)
            step["fraction_of_probe"] = fraction
            step["sustained"] = self._sustained(step, offered)
            steps.append(step)
            if not step["sustained"] and fraction >= 1.0:
                break
            if not fractions and step["sustained"] and len(steps) < plan.max_steps:
                fractions.append(fraction * 1.25)  # still holding: keep climbing
        candidates = [s for s in steps if s["sustained"]]
        if probe["ack_ms"]["p99"] < ACK_P99_LIMIT_MS and not _failures(probe):
            candidates.append(probe)
        best = max(candidates, key=lambda s: s["committed_events_per_s"], default=None)
        return {
            "events_per_s": best["committed_events_per_s"] if best else 0.0,
            "from": (best.get("mode") or f"open loop at {best['offered_events_per_s']} ev/s")
            if best
            else "nothing sustained",
            "mean_events_per_post": round(mean_events, 3),
            "probe": probe,
            "steps": steps,
        }

    def _sustained(self, step: dict[str, Any], offered: float) -> bool:
        return (
            step["ack_ms"]["p99"] < ACK_P99_LIMIT_MS
            and not _failures(step)
            and step["committed_events_per_s"] >= 0.9 * offered
        )

    async def latency(self, sustained_eps: float) -> dict[str, Any]:
        """ACK latency at a fixed offered 1,000 events/s, or the highest sustained rate."""
        offered = float(TARGET_LATENCY_EPS)
        note = "offered 1,000 events/s"
        if sustained_eps < TARGET_LATENCY_EPS:
            offered = max(10.0, 0.9 * sustained_eps)
            note = (
                f"this machine sustains {sustained_eps:.0f} events/s end to end, below 1,000:"
                f" offered {offered:.0f} events/s (90% of it) instead"
            )
        if self.plan.name == "quick":
            offered = min(offered, 200.0)
            note = f"quick mode: offered {offered:.0f} events/s"
        rate_rps = offered / self.mean_events
        bodies = self.generator.bodies(max(1, int(rate_rps * self.plan.latency_s)))
        result = await self.load(bodies, offered, rate_rps=rate_rps)
        result["note"] = note
        start_ms, end_ms = result["window_ms"]
        rows = await apply.wait_visible(self.url, start_ms, until_ms=end_ms)
        result["apply_lag_ms"] = apply.lag_ms(rows, start_ms, end_ms)
        result["batching"] = await asyncio.to_thread(apply.batching, self.url, start_ms, end_ms)
        await self.settle()
        return result

    async def offered(
        self, offered_eps: float, seconds: float, sustained_eps: float
    ) -> dict[str, Any]:
        """Exactly `offered_eps` events/s, open loop, whatever the suite sustains: ACK
        latency, what was committed, and log commit → visible. For `seconds`, or 2 s at
        most when that is over twice what the suite sustained: enough to show the miss
        without minutes of overload (and 503s) spilling into the next figures."""
        note = None
        if offered_eps > 2 * sustained_eps and seconds > 2:
            seconds = 2.0
            note = (
                f"shortened to {seconds:g} s: the suite sustained {sustained_eps:,.0f} events/s,"
                " so this step only measures an overload"
            )
        rate_rps = offered_eps / self.mean_events
        bodies = self.generator.bodies(max(1, int(rate_rps * seconds)))
        result = await self.load(bodies, offered_eps, rate_rps=rate_rps)
        result["sustained"] = self._sustained(result, offered_eps)
        result["step_s"] = seconds
        if note:
            result["note"] = note
        start_ms, end_ms = result["window_ms"]
        rows = await apply.wait_visible(self.url, start_ms, until_ms=end_ms)
        result["apply_lag_ms"] = apply.lag_ms(rows, start_ms, end_ms)
        result["batching"] = await asyncio.to_thread(apply.batching, self.url, start_ms, end_ms)
        await self.settle()
        return result

    async def applied(self, offered_eps: float) -> dict[str, Any]:
        """Events/s made visible during `plan.applied_s` at `offered_eps`, and whether the
        backlog (pending entries, sampled every 0.5 s) grew; half the rate once more if it
        did. Also the CPU every process (and the run's PostgreSQL backends) spent per
        event committed meanwhile: append and apply together, in steady state."""
        result: dict[str, Any] = {}
        for attempt in range(2 if self.plan.name == "full" else 1):
            rate = offered_eps / 2**attempt
            rate_rps = rate / self.mean_events
            bodies = self.generator.bodies(max(1, int(rate_rps * self.plan.applied_s)))
            stop = asyncio.Event()
            sampler = asyncio.create_task(apply.sample_pending(self.url, stop))
            cpu_before, pg_before = (
                self.cpu_seconds(),
                await asyncio.to_thread(postgres_cpu, self.url),
            )
            try:
                step = await self.load(bodies, rate, rate_rps=rate_rps)
            finally:
                stop.set()
                samples = await sampler
            cpu_after, pg_after = (
                self.cpu_seconds(),
                await asyncio.to_thread(postgres_cpu, self.url),
            )
            start_ms = step["window_ms"][0]
            end_ms = start_ms + int(self.plan.applied_s * 1000)
            rows = await apply.wait_visible(self.url, start_ms, until_ms=end_ms, timeout_s=2)
            committed = max(1, step["events_committed"])
            cpu = {
                name: round(1e6 * (cpu_after[name] - cpu_before[name]) / committed, 1)
                for name in cpu_after
                if name in cpu_before
            }
            shared = set(pg_before) & set(pg_after)
            cpu["postgres backends"] = round(
                1e6 * sum(pg_after[p] - pg_before[p] for p in shared) / committed, 1
            )
            result = {
                "offered_events_per_s": round(rate, 1),
                **apply.applied_rate(rows, start_ms, end_ms, samples),
                "apply_lag_ms": apply.lag_ms(rows, start_ms, end_ms),
                "committed_events_per_s": step["committed_events_per_s"],
                "statuses": step["statuses"],
                "ack_ms": step["ack_ms"],
                "cpu_us_per_event": cpu,
                "batching": await asyncio.to_thread(apply.batching, self.url, start_ms, end_ms),
                "cpu_note": "CPU seconds of each process over the step / events committed;"
                f" PostgreSQL: the {len(shared)} backends of the run's database alive"
                " throughout (WAL writer, checkpointer and other databases not counted)",
            }
            await self.settle()
            if not result["pending_growing"]:
                break
        return result


def postgres_cpu(url: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the run's database (from /proc: the
    server runs on this machine), by pid; empty when they cannot be read."""
    with psycopg.connect(db.plain_url(url), autocommit=True) as conn:
        pids = [
            int(r[0])
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        ]
    out = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _failures(step: dict[str, Any]) -> int:
    return sum(n for status, n in step["statuses"].items() if status != "200")


async def connect_pages(suite: Suite) -> None:
    """Every bench page connected through fake Graph, with the CLI."""

    async def one(page: str, account: str, platform_name: str) -> None:
        token = suite.workdir / f"{page}.token"
        token.write_text(f"EAAGbench{page}{secrets.token_hex(12)}\n")
        await suite.cli(
            "pages",
            "connect",
            "--platform",
            platform_name,
            "--page-id",
            page,
            "--account",
            account,
            "--token-file",
            str(token),
        )

    pages = [(p, a, "facebook") for p, a in FACEBOOK_PAGES.items()]
    pages += [(p, a, "instagram") for p, a in INSTAGRAM_PAGES.items()]
    for page, account, platform_name in pages:
        for attempt in range(3):
            try:
                await one(page, account, platform_name)
                break
            except RuntimeError:
                if attempt == 2:
                    raise


async def run(
    plan: Plan,
    *,
    admin_url: str,
    redis_url: str,
    out_dir: Path,
    tls: bool = True,
    profile_s: float = 0.0,
) -> dict[str, Any]:
    """One whole benchmark; returns the results (also written to `out_dir`)."""
    stamp = _now()
    run_id = f"{stamp.lower()}_{secrets.token_hex(2)}"
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "mode": plan.name,
        "started_at": stamp,
        "command": "make bench" if plan.name == "full" else "python -m bench --quick",
        "machine": machine(admin_url, redis_url),
        "grpc": "mutual TLS" if tls else "plaintext (PAGEWIRE_INSECURE_GRPC=1)",
        "plan": asdict(plan),
        "closed_loop_generator": "wrk" if wrk.binary() else "Python driver",
    }
    workdir = Path(tempfile.mkdtemp(prefix="pagewire-bench-"))
    started = time.monotonic()
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            timings[name] = round(time.monotonic() - began, 1)

    with (
        db.database(admin_url, f"pagewire_bench_{run_id}") as url,
        db.redis_prefix(redis_url, f"pwbench{run_id}") as prefix,
        Drivers(2) as drivers,
    ):
        graph = await fakegraph.start()
        suite = Suite.create(
            workdir,
            database_url=db.sqlalchemy_url(url),
            redis_url=redis_url,
            redis_prefix=prefix,
            graph_url=graph.url,
            keyring=generate_keyring(),
            tls=tls,
        )
        try:
            with timed("floor"):
                results["floor"] = await measure_floor(plan, url, redis_url, prefix)
            bench = Bench(plan, suite, drivers, url)
            # Before Pagewire starts: the ceiling gets the machine Pagewire gets.
            with timed("ceiling"):
                results["ceiling"] = await ceiling_run.measure(bench, url)
            bench.ceiling_posts_per_s = results["ceiling"]["posts_per_s"]
            with timed("router_in_process"):
                results["router_in_process"] = await router_in_process(
                    plan,
                    admin_url,
                    f"pagewire_bench_{run_id}_inproc",
                    redis_url,
                    f"{prefix}:inproc",
                )
                results["apply_statements"] = apply.apply_statements_per_event(
                    results["router_in_process"]
                )
            timed_start = time.monotonic()
            router_ports = [suite.free_port() for _ in ROUTERS]
            # Every caller of the router (gateway, subscriptions) balances over both replicas.
            suite.env["PAGEWIRE_ROUTER_ADDR"] = "ipv4:" + ",".join(
                f"127.0.0.1:{p}" for p in router_ports
            )
            await suite.start("tokens")
            await suite.start("subscriptions")
            for name, port in zip(ROUTERS, router_ports, strict=True):
                await suite.start("router", name=name, PAGEWIRE_ROUTER_PORT=str(port))
            await suite.start("gateway")
            await connect_pages(suite)
            resources = {
                name: {"serving_s": round(p.serving_s, 3), "idle": p.memory_mb()}
                for name, p in suite.procs.items()
            }
            timings["start_and_connect"] = round(time.monotonic() - timed_start, 1)
            with timed("throughput"):
                warmup = await bench.load(bench.generator.bodies(plan.warmup_bodies), concurrency=8)
                results["throughput"] = await bench.throughput(warmup)
            floor_eps = results["floor"]["postgres_inserts_per_s"]
            results["throughput"]["ratio_to_floor"] = round(
                results["throughput"]["events_per_s"] / floor_eps, 4
            )
            python_floor = results["floor"]["psycopg_inserts_per_s"]
            results["throughput"]["ratio_to_python_floor"] = round(
                results["throughput"]["events_per_s"] / python_floor, 4
            )
            ceiling_eps = results["ceiling"]["events_per_s"]
            results["throughput"]["ratio_to_ceiling"] = (
                round(results["throughput"]["events_per_s"] / ceiling_eps, 4)
                if ceiling_eps
                else None
            )
            with timed("latency"):
                results["latency"] = await bench.latency(results["throughput"]["events_per_s"])
            with timed("offered"):
                sustained = results["throughput"]["events_per_s"]
                results["offered"] = {
                    str(eps): await bench.offered(eps, plan.rate_s, sustained) for eps in plan.rates
                }
            with timed("applied"):
                results["applied"] = (
                    await bench.applied(results["throughput"]["events_per_s"])
                    if results["throughput"]["events_per_s"]
                    else {"note": "nothing sustained: no rate to hold"}
                )
            with timed("burst"):
                results["burst"] = await burst.bursts(
                    bench,
                    [suite.gateway_url],
                    plan.burst_events,
                    plan.burst_posts,
                    plan.burst_repeats,
                )
            if profile_s:
                results["profile"] = await profile.under_load(
                    suite, bench, profile_s, out_dir / f"{stamp}-profile"
                )
            for name, proc in suite.procs.items():
                if name in resources:
                    resources[name]["after_load"] = proc.memory_mb()
            results["resources"] = resources
            # Every router applies whatever is pending in the log: the ablation's routers
            # must be the only ones, so the suite's stop here (and its gateway with them).
            await asyncio.gather(*(suite.stop(name) for name in (*ROUTERS, "gateway")))
            with timed("lock_ablation"):
                results["lock_ablation"] = await burst.ablation(bench)
            with timed("send_lock_ablation"):
                results["send_lock_ablation"] = await send_lock_ablation(
                    plan, redis_url, f"{prefix}:sendlock"
                )
        finally:
            await suite.stop_all()
            await graph.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with every process's log, on a failure
    results["seconds"] = round(time.monotonic() - started, 1)
    results["timings_s"] = timings
    results["targets"] = targets.issue13(results)
    results["targets_issue4"] = targets.issue4(results)
    results["file"] = str(out_dir / f"{stamp}.json")
    await asyncio.to_thread(_write, out_dir, results)
    return results


async def router_in_process(
    plan: Plan, admin_url: str, database: str, redis_url: str, prefix: str
) -> dict[str, Any]:
    """The router's two stages in-process (bench/inproc.py); an error instead when it no
    longer matches the router's internals (it imports them), so the rest still runs."""
    try:
        from bench import inproc

        full = plan.name == "full"
        return await inproc.router_cost(
            admin_url,
            database,
            redis_url,
            prefix,
            append_events=8000 if full else 1000,
            callers=64,
            apply_rounds=5 if full else 1,
        )
    except Exception as exc:  # the router's internals changed under bench/inproc.py
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


async def send_lock_ablation(plan: Plan, redis_url: str, prefix: str) -> dict[str, Any]:
    """How a SendMessage waits for its conversation's lock (bench/locks.py), in-process;
    an error instead when bench/locks.py no longer matches the router's lock."""
    try:
        from bench import locks

        full = plan.name == "full"
        return await locks.send_ablation(redis_url, prefix, holders=20 if full else 3)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def _write(out_dir: Path, results: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    Path(results["file"]).write_text(json.dumps(results, indent=2) + "\n")


async def measure_floor(plan: Plan, url: str, redis_url: str, prefix: str) -> dict[str, Any]:
    pgbench = await asyncio.to_thread(floor.pgbench_floor, url, plan.floor_s)
    python = await asyncio.to_thread(floor.psycopg_floor, url, plan.floor_s)
    redis_rt = await floor.redis_set_nx(redis_url, prefix, plan.redis_samples)
    return {
        "postgres_inserts_per_s": round(pgbench if pgbench is not None else python, 1),
        "postgres_floor_by": "pgbench, 8 connections" if pgbench is not None else "psycopg",
        "psycopg_inserts_per_s": round(python, 1),
        "connections": 8,
        "redis_set_nx_px": redis_rt,
    }
