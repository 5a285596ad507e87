"""The chaos harness and its five scenarios.

`Harness` runs the whole suite — two gateways, two routers, tokens,
subscriptions — on a PostgreSQL and a Redis of its own (tests/chaos/servers.py),
so that they can be crashed. Each scenario delivers its own conversations
through a `MetaSender` while one fault strikes once 30% of the POSTs were
acknowledged, heals, delivers the in-order twins, and compares (verify.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.db import sqlalchemy_url
from bench.procs import APP_SECRET, Suite
from pagewire import fakegraph
from pagewire.kit import migrate
from pagewire.localsuite import free_port
from services.tokens.vault import generate_keyring
from tests.chaos.meta import PAGES, MetaSender, Workload, deliver_in_order, event_ids
from tests.chaos.servers import OwnPostgres, OwnRedis
from tests.chaos.verify import compare

LOCK_TTL_MS = 2000
TRIGGER = 0.3  # the fault strikes once this share of the POSTs was acknowledged


@dataclass
class Size:
    """How big each scenario is: `short` for `make test`, `full` for `make chaos`."""

    conversations: int
    items: tuple[int, int]
    hot_conversations: int  # scenario 4 concentrates on few conversations
    hot_items: tuple[int, int]


SHORT = Size(24, (3, 6), 6, (8, 12))
FULL = Size(150, (4, 9), 12, (20, 30))


@dataclass
class Harness:
    root: Path
    postgres: OwnPostgres
    redis: OwnRedis
    suite: Suite
    graph: fakegraph.FakeGraph
    database_url: str
    router_ports: dict[str, int]
    gateway_ports: dict[str, int]

    @property
    def gateways(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.gateway_ports.values()]

    async def start_router(self, name: str) -> None:
        await self.suite.start(
            "router", name=name, PAGEWIRE_ROUTER_PORT=str(self.router_ports[name])
        )

    async def start_gateway(self, name: str) -> None:
        await self.suite.start(
            "gateway", name=name, PAGEWIRE_GATEWAY_PORT=str(self.gateway_ports[name])
        )

    async def heal(self) -> None:
        """Everything up again, whatever a scenario left down."""
        if not await asyncio.to_thread(self.postgres.running):
            await asyncio.to_thread(self.postgres.start)
        if self.redis.popen is None:
            await asyncio.to_thread(self.redis.start)
        for name in self.router_ports:
            proc = self.suite.procs.get(name)
            if proc is None or proc.popen.poll() is not None:
                self.suite.procs.pop(name, None)
                await self.start_router(name)
            else:
                self.suite.thaw(name)
        for name in self.gateway_ports:
            if name not in self.suite.procs:
                await self.start_gateway(name)

    def log_count(self, text: str) -> int:
        return self.suite.logs().count(text)


@contextlib.asynccontextmanager
async def harness(tls: bool = True) -> AsyncIterator[Harness]:
    """Own PostgreSQL and Redis, fake Graph, and the suite with two routers and two gateways."""
    root = Path(tempfile.mkdtemp(prefix="pagewire-chaos-"))
    os.chmod(root, 0o711)  # the `postgres` user must reach its data directory inside
    postgres = OwnPostgres(root / "pg")
    redis = OwnRedis(root / "redis")
    graph = None
    suite = None
    ok = False
    try:
        await asyncio.to_thread(postgres.init)
        await asyncio.to_thread(postgres.start)
        url = await asyncio.to_thread(postgres.create_database, "pagewire")
        for service in migrate.SERVICES_WITH_SCHEMA:
            await asyncio.to_thread(migrate.upgrade, service, sqlalchemy_url(url))
        await asyncio.to_thread(redis.start)
        graph = await fakegraph.start()
        suite = Suite.create(
            root / "suite",
            database_url=sqlalchemy_url(url),
            redis_url=redis.url,
            redis_prefix="pwchaos",
            graph_url=graph.url,
            keyring=generate_keyring(),
            tls=tls,
            extra_env={"PAGEWIRE_LOCK_TTL_MS": str(LOCK_TTL_MS)},
        )
        routers = {"router1": free_port(), "router2": free_port()}
        gateways = {"gateway1": free_port(), "gateway2": free_port()}
        suite.env["PAGEWIRE_ROUTER_ADDR"] = "ipv4:" + ",".join(
            f"127.0.0.1:{p}" for p in routers.values()
        )
        h = Harness(root, postgres, redis, suite, graph, url, routers, gateways)
        await suite.start("tokens")
        await suite.start("subscriptions")
        for name in routers:
            await h.start_router(name)
        for name in gateways:
            await h.start_gateway(name)
        for page, account in PAGES.items():
            token = root / f"{page}.token"
            token.write_text(f"EAAGchaos{page}{secrets.token_hex(8)}\n")
            await suite.cli(
                "pages",
                "connect",
                "--platform",
                "facebook",
                "--page-id",
                page,
                "--account",
                account,
                "--token-file",
                str(token),
            )
        yield h
        ok = True
    finally:
        if suite is not None:
            await suite.stop_all()
        if graph is not None:
            await graph.stop()
        redis.stop()
        with contextlib.suppress(RuntimeError):
            if await asyncio.to_thread(postgres.running):
                await asyncio.to_thread(postgres.stop, "immediate")
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"chaos: logs kept in {root}")


# ---- faults: each waits for the trigger, strikes, and says what it did ----------------------

FaultFn = Callable[[Harness, MetaSender], Awaitable[dict[str, Any]]]


async def kill_router(h: Harness, sender: MetaSender) -> dict[str, Any]:
    await sender.progress(TRIGGER)
    struck = time.monotonic()
    await h.suite.kill("router2")
    await asyncio.sleep(2)  # the replica stays dead this long before Kubernetes restarts it
    await h.start_router("router2")
    return {"fault": "router2 SIGKILLed, restarted after 2 s", "down_s": time.monotonic() - struck}


async def redis_outage(h: Harness, sender: MetaSender) -> dict[str, Any]:
    await sender.progress(TRIGGER)
    struck = time.monotonic()
    await asyncio.to_thread(h.redis.stop)
    await asyncio.sleep(5)  # the outage itself
    await asyncio.to_thread(h.redis.start)
    return {"fault": "Redis killed for 5 s, restarted empty", "down_s": time.monotonic() - struck}


async def postgres_outage(h: Harness, sender: MetaSender) -> dict[str, Any]:
    await sender.progress(TRIGGER)
    struck = time.monotonic()
    await asyncio.to_thread(h.postgres.stop, "immediate")
    await asyncio.sleep(3)  # the outage itself
    await asyncio.to_thread(h.postgres.start)
    return {
        "fault": "PostgreSQL stopped (-m immediate: a crash, WAL replayed) for 3 s, restarted",
        "down_s": time.monotonic() - struck,
    }


async def freeze_holder(h: Harness, sender: MetaSender) -> dict[str, Any]:
    """SIGSTOP router1 (and with it every lock it holds and their renewals) past the
    locks' TTL, three times during the run, so the other replica takes the locks over."""
    before = h.log_count("stale lock holder")
    frozen_s = 3 * LOCK_TTL_MS / 1000
    for share in (TRIGGER, 0.5, 0.7):
        await sender.progress(share)
        if sender.report.acked >= sender.report.posts:
            break
        h.suite.freeze("router1")
        await asyncio.sleep(frozen_s)  # frozen well past its locks' TTL
        h.suite.thaw("router1")
    return {
        "fault": f"router1 SIGSTOPped for {frozen_s:g} s (lock TTL {LOCK_TTL_MS / 1000:g} s)"
        " at 30%, 50% and 70% of the run, then SIGCONT",
        "down_s": frozen_s,
        "before_stale": before,
    }


async def kill_gateway(h: Harness, sender: MetaSender) -> dict[str, Any]:
    await sender.progress(TRIGGER)
    struck = time.monotonic()
    await h.suite.kill("gateway2")
    await asyncio.sleep(2)
    await h.start_gateway("gateway2")
    return {"fault": "gateway2 SIGKILLed, restarted after 2 s", "down_s": time.monotonic() - struck}


SCENARIOS: dict[str, tuple[str, FaultFn]] = {
    "1_router_killed": ("a router replica SIGKILLed mid-run", kill_router),
    "2_redis_restarted_empty": ("Redis stopped for 5 s and restarted empty", redis_outage),
    "3_postgres_restarted": ("PostgreSQL stopped and restarted", postgres_outage),
    "4_lock_holder_frozen": ("a lock holder frozen past its TTL, then resumed", freeze_holder),
    "5_gateway_killed": ("a gateway replica SIGKILLed mid-run", kill_gateway),
}


async def run_scenario(h: Harness, key: str, size: Size, seed: int) -> dict[str, Any]:
    """One scenario end to end; the result says whether it passed and why not."""
    title, fault = SCENARIOS[key]
    tag = int(key.split("_", 1)[0])
    hot = key == "4_lock_holder_frozen"
    workload = Workload.build(
        tag,
        size.hot_conversations if hot else size.conversations,
        size.hot_items if hot else size.items,
        seed,
    )
    posts = workload.chaos_posts(seed)
    sender = MetaSender(h.gateways, APP_SECRET, h.database_url)
    began = time.monotonic()
    strike = asyncio.create_task(fault(h, sender))
    report = await sender.run(posts)
    fault_info: dict[str, Any] = {"fault": "not reached"}
    if report.acked >= TRIGGER * report.posts:
        # It struck mid-run; its restart may outlast the sending. A fault that failed
        # (a process that would not restart) raises here and fails the scenario.
        fault_info = await strike
    else:
        strike.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await strike
    await h.heal()
    await deliver_in_order(h.gateways[0], APP_SECRET, workload.reference_posts())
    verdict = compare(h.database_url, workload)
    result: dict[str, Any] = {
        "scenario": key,
        "title": title,
        "conversations": len(workload.conversations),
        "events_sent": sum(len(c.items) for c in workload.conversations),
        "deliveries": sum(len(event_ids(p)) for p in posts),  # with the 10% sent twice
        **fault_info,
        "sender": report.as_dict(),
        **verdict,
        "seconds": round(time.monotonic() - began, 1),
    }
    if hot:
        result["stale_writes_rejected"] = h.log_count("stale lock holder") - result.pop(
            "before_stale", 0
        )
    if "down_s" in result:
        result["down_s"] = round(result["down_s"], 2)
    result["passed"] = bool(
        verdict["passed"]
        and report.unacked == 0
        and not report.acked_not_committed
        and result["fault"] != "not reached"
    )
    result["acked_not_committed_examples"] = report.acked_not_committed[:3]
    return result
