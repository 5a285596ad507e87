"""The benchmark run: floor, throughput, latency, one-conversation burst, lock ablation, resources.

Everything runs against real processes on this machine's PostgreSQL and Redis,
in a database and key prefix of the run's own (dropped afterwards). Pages are
connected through the fake Graph API with the `pagewire` CLI, as an operator
would. What counts as committed is read from PostgreSQL, never from the
gateway's answers alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench import db, floor, inproc, profile
from bench.bodies import (
    FACEBOOK_PAGES,
    INSTAGRAM_PAGES,
    Body,
    Generator,
    burst,
)
from bench.driver import Drivers, Outcome
from bench.locks import STRATEGIES
from bench.procs import APP_SECRET, Suite
from pagewire import fakegraph
from pagewire.localsuite import free_port
from services.tokens.vault import generate_keyring

SCHEMA_VERSION = 1
ACK_P99_LIMIT_MS = 1000.0
TARGET_LATENCY_EPS = 1000
BURST_PAGE = "109384756201938"
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


FULL = Plan(
    "full", 5, 400, 8, 32, (0.6, 0.8, 0.9, 1.0, 1.1, 1.25), 8, 12, 500, 20, 3, 500, 2000, 12
)
QUICK = Plan("quick", 1, 40, 1.5, 16, (0.7,), 1.5, 1.5, 100, 10, 1, 100, 200, 1)


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

    # -- helpers --------------------------------------------------------------------------

    async def send(self, targets: list[str], bodies: list[Body], **how: Any) -> Outcome:
        return await asyncio.to_thread(self.drivers.run, targets, bodies, **how)

    def measured(self, outcome: Outcome, committed: int, offered_eps: float | None) -> dict:
        elapsed = outcome.finished - outcome.started
        return {
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

    async def throughput(self) -> dict[str, Any]:
        """A closed-loop probe for the capacity, then open-loop steps around it; the
        figure is the highest committed rate whose ACK p99 stayed under 1 s."""
        plan = self.plan
        mean_events = sum(b.events for b in self.generator.bodies(400)) / 400
        cpu_before = self.cpu_seconds()
        began = time.monotonic()
        probe = await self.load(
            self.generator.bodies(int(plan.probe_s * 1500)),
            concurrency=plan.probe_concurrency,
            duration_s=plan.probe_s,
        )
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
        mean_events = sum(b.events for b in self.generator.bodies(200)) / 200
        rate_rps = offered / mean_events
        bodies = self.generator.bodies(max(1, int(rate_rps * self.plan.latency_s)))
        result = await self.load(bodies, offered, rate_rps=rate_rps)
        result["note"] = note
        return result

    async def one_burst(self, targets: list[str], events: int, posts: int) -> dict[str, Any]:
        """`events` messages into one new conversation from `posts` concurrent POSTs; a
        POST that gets no 200 is sent again, as Meta would, until every one is stored."""
        user = "9" + "".join(str(secrets.randbelow(10)) for _ in range(15))
        bodies, expected = burst(
            APP_SECRET,
            page=BURST_PAGE,
            user=user,
            events=events,
            posts=posts,
            seed=secrets.randbits(32),
            start_ms=1_790_000_000_000,
        )
        began = time.monotonic()
        pending = list(range(len(bodies)))
        resent = 0
        statuses: dict[str, int] = {}
        for _ in range(40):
            outcome = await self.send(
                targets, [bodies[i] for i in pending], concurrency=len(pending)
            )
            for status, count in outcome.statuses().items():
                statuses[status] = statuses.get(status, 0) + count
            pending = [pending[i] for i in outcome.not_ok()]
            if not pending:
                break
            resent += len(pending)
            await asyncio.sleep(0.25)  # the sender's backoff before redelivering
        drain = time.monotonic() - began
        rows = _query(
            self.url,
            "SELECT m.timestamp_ms, m.mid FROM router.messages m"
            " JOIN router.conversations c ON c.id = m.conversation_id"
            " WHERE c.page_id = %s AND c.user_id = %s ORDER BY m.timestamp_ms, m.mid",
            BURST_PAGE,
            user,
        )
        stored = [(int(ts), mid) for ts, mid in rows]
        count = _query(
            self.url,
            "SELECT message_count FROM router.conversations WHERE page_id = %s AND user_id = %s",
            BURST_PAGE,
            user,
        )
        return {
            "events": events,
            "posts": posts,
            "drain_s": round(drain, 3),
            "events_per_s": round(events / drain, 1),
            "stored": len(stored),
            "duplicates": len(stored) - len(set(mid for _, mid in stored)),
            "missing": len(set(expected) - set(stored)),
            "order_ok": stored == expected,
            "conversation_message_count": int(count[0][0]) if count else 0,
            "statuses": statuses,
            "resent_posts": resent,
            "unfinished_posts": len(pending),
        }

    async def bursts(self, targets: list[str], events: int, posts: int, repeats: int) -> dict:
        runs = [await self.one_burst(targets, events, posts) for _ in range(repeats)]
        median = sorted(runs, key=lambda r: r["drain_s"])[len(runs) // 2]
        return {
            "events": events,
            "posts": posts,
            "repeats": repeats,
            "drain_s": median["drain_s"],
            "events_per_s": median["events_per_s"],
            "duplicates": sum(r["duplicates"] for r in runs),
            "missing": sum(r["missing"] for r in runs),
            "order_ok": all(r["order_ok"] for r in runs),
            "resent_posts": sum(r["resent_posts"] for r in runs),
            "runs": runs,
        }

    async def ablation(self) -> dict[str, Any]:
        """The same burst through two routers running each lock waiting strategy."""
        out = {}
        plan = self.plan
        for strategy in STRATEGIES:
            names, ports = [], []
            try:
                for i in (1, 2):
                    port = free_port()
                    name = f"router-{strategy.replace(':', '')}-{i}"
                    await self.suite.start(
                        "router",
                        name=name,
                        module="bench.router_variant",
                        PAGEWIRE_ROUTER_PORT=str(port),
                        PAGEWIRE_BENCH_LOCK_WAIT=strategy,
                    )
                    names.append(name)
                    ports.append(port)
                gateway = f"gateway-{strategy.replace(':', '')}"
                await self.suite.start(
                    "gateway",
                    name=gateway,
                    PAGEWIRE_GATEWAY_PORT=str(free_port()),
                    PAGEWIRE_ROUTER_ADDR="ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports),
                )
                names.append(gateway)
                out[strategy] = await self.bursts(
                    [self.suite.url(gateway)],
                    plan.ablation_events,
                    plan.burst_posts,
                    max(1, plan.burst_repeats - 1),
                )
            finally:
                for name in names:
                    await self.suite.stop(name)
        return out


def _failures(step: dict[str, Any]) -> int:
    return sum(n for status, n in step["statuses"].items() if status != "200")


def _query(url: str, sql: str, *params: object) -> list[tuple]:  # type: ignore[type-arg]
    with psycopg.connect(db.plain_url(url), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


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
    }
    workdir = Path(tempfile.mkdtemp(prefix="pagewire-bench-"))
    started = time.monotonic()
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
            results["floor"] = await measure_floor(plan, url, redis_url, prefix)
            results["router_in_process"] = await inproc.router_cost(
                db.sqlalchemy_url(url),
                redis_url,
                f"{prefix}:inproc",
                300 if plan.name == "full" else 60,
            )
            router_ports = [free_port() for _ in ROUTERS]
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
            bench = Bench(plan, suite, drivers, url)
            await bench.load(bench.generator.bodies(plan.warmup_bodies), concurrency=8)
            results["throughput"] = await bench.throughput()
            floor_eps = results["floor"]["postgres_inserts_per_s"]
            results["throughput"]["ratio_to_floor"] = round(
                results["throughput"]["events_per_s"] / floor_eps, 4
            )
            python_floor = results["floor"]["psycopg_inserts_per_s"]
            results["throughput"]["ratio_to_python_floor"] = round(
                results["throughput"]["events_per_s"] / python_floor, 4
            )
            results["latency"] = await bench.latency(results["throughput"]["events_per_s"])
            results["burst"] = await bench.bursts(
                [suite.gateway_url], plan.burst_events, plan.burst_posts, plan.burst_repeats
            )
            results["lock_ablation"] = await bench.ablation()
            if profile_s:
                results["profile"] = await profile.under_load(
                    suite, bench, profile_s, out_dir / f"{stamp}-profile"
                )
            for name, proc in suite.procs.items():
                if name in resources:
                    resources[name]["after_load"] = proc.memory_mb()
            results["resources"] = resources
        finally:
            await suite.stop_all()
            await graph.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept, with every process's log, on a failure
    results["seconds"] = round(time.monotonic() - started, 1)
    results["targets"] = targets(results)
    results["file"] = str(out_dir / f"{stamp}.json")
    await asyncio.to_thread(_write, out_dir, results)
    return results


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


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Where the run stands against each target of issue 4 (a miss is reported, not failed)."""
    resources = results.get("resources", {})
    idle = max((r["idle"]["rss_mb"] for r in resources.values()), default=0.0)
    serving = max((r["serving_s"] for r in resources.values()), default=0.0)
    latency = results["latency"]
    burst_result = results["burst"]
    offered_1000 = latency["offered_events_per_s"] == TARGET_LATENCY_EPS
    return {
        "end_to_end_vs_floor": {
            "target": ">= 0.5x floor",
            "value": results["throughput"]["ratio_to_floor"],
            "met": results["throughput"]["ratio_to_floor"] >= 0.5,
        },
        "ack_p99_at_1000": {
            "target": "<= 25 ms at 1,000 events/s",
            "value": latency["ack_ms"]["p99"],
            "met": offered_1000 and latency["ack_ms"]["p99"] <= 25,
            "offered": latency["offered_events_per_s"],
        },
        "burst": {
            "target": ">= 1,000 events/s, 0 duplicates",
            "value": burst_result["events_per_s"],
            "met": burst_result["events_per_s"] >= 1000 and burst_result["duplicates"] == 0,
        },
        "idle_rss": {"target": "<= 80 MB per service", "value": round(idle, 1), "met": idle <= 80},
        "serving": {"target": "<= 2 s", "value": round(serving, 3), "met": serving <= 2},
    }
