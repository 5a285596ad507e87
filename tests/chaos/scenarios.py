"""The chaos harness and its nine scenarios.

`Harness` runs the whole suite — two gateways, two routers, tokens,
subscriptions — on a PostgreSQL and a Redis of its own (tests/chaos/servers.py),
so that they can be crashed. Each scenario delivers its own conversations
through a `MetaSender` while one fault strikes once 30% of the POSTs were
acknowledged; the sender checks at every 200 that the POST's events are in the
log. Then the harness heals, waits for the log to have no pending entry,
delivers the in-order twins (each POST applied before the next), waits again,
and compares (verify.py); some scenarios add verdicts of their own.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.db import sqlalchemy_url
from bench.procs import APP_SECRET, Suite
from pagewire import fakegraph
from pagewire.kit import migrate
from pagewire.kit.timeutil import now_ms
from pagewire.localsuite import free_port
from services.tokens.vault import generate_keyring
from tests.chaos.meta import (
    ALL_PAGES,
    PAGES,
    PURGE_PAGE,
    MetaSender,
    Workload,
    deliver_in_order,
    event_ids,
    event_keys,
    fresh_messages,
)
from tests.chaos.servers import OwnPostgres, OwnRedis
from tests.chaos.verify import (
    applied_between,
    compare,
    drain,
    log_counts,
    move_verdict,
    purge_residue,
)

LOCK_TTL_MS = 2000
# A replica that dies or freezes with a claimed batch loses it to the other after this
# (production: 30 s): short enough that it happens within a run.
APPLY_LEASE_MS = 5000
TRIGGER = 0.3  # the fault strikes once this share of the POSTs was acknowledged
INGEST_TIMEOUT_S = 4.0  # the gateway's Ingest deadline (PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S)
REDIS_FREEZE_S = 6.0  # longer than that deadline
DRAIN_TIMEOUT_S = 120.0  # how long the log may take to have no pending entry after a run
MOVED_PAGE = next(iter(PAGES))  # scenario 6 moves it from acme to this account, and back
MOVED_TO = "umbrella"
STALE_LINE = "stale batch's write refused; its entries go to the next batch"
WAITING_LINE = "apply stage waiting for a dependency"


@dataclass
class Size:
    """How big each scenario is: `short` for `make test`, `full` for `make chaos`."""

    conversations: int
    items: tuple[int, int]
    hot_conversations: int  # scenario 4 concentrates on few conversations
    hot_items: tuple[int, int]
    subscriptions_down_s: float  # scenario 9's outage
    fresh_after_purge: int  # scenario 7: new messages of the purged page, sent after it


SHORT = Size(24, (3, 6), 6, (8, 12), 5.0, 3)
FULL = Size(150, (4, 9), 12, (20, 30), 60.0, 10)


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

    async def connect_page(self, page: str, account: str, *, move: bool = False) -> str:
        """`pagewire pages connect` as an operator runs it; the CLI's answer."""
        token = self.root / f"{page}.token"
        if not token.exists():
            token.write_text(f"EAAGchaos{page}{secrets.token_hex(8)}\n")
        args = ["--platform", "facebook", "--page-id", page, "--account", account]
        args += ["--token-file", str(token), *(["--move"] if move else [])]
        return (await self.suite.cli("pages", "connect", *args)).strip()

    async def heal(self) -> None:
        """Everything up again, whatever a scenario left down."""
        if not await asyncio.to_thread(self.postgres.running):
            await asyncio.to_thread(self.postgres.start)
        if self.redis.popen is None:
            await asyncio.to_thread(self.redis.start)
        self.redis.thaw()
        for service in ("tokens", "subscriptions"):
            proc = self.suite.procs.get(service)
            if proc is None or proc.popen.poll() is not None:
                self.suite.procs.pop(service, None)
                await self.suite.start(service)
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
            extra_env={
                "PAGEWIRE_LOCK_TTL_MS": str(LOCK_TTL_MS),
                "PAGEWIRE_APPLY_LEASE_MS": str(APPLY_LEASE_MS),
                "PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S": str(INGEST_TIMEOUT_S),
            },
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
        for page, account in ALL_PAGES.items():
            await h.connect_page(page, account)
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


@dataclass
class Run:
    """One scenario in progress: what it sends, and what its fault noted for its verdict."""

    key: str
    tag: int
    size: Size
    seed: int
    workload: Workload
    posts: list[bytes]
    sender: MetaSender
    notes: dict[str, Any] = field(default_factory=dict)


# ---- faults: each waits for the trigger, strikes, and says what it did ----------------------
# Each returns the fault's description and `struck` (monotonic seconds), and `healed` when
# the fault ends before the function returns (a restart it then waits for): the window in
# which the sender's answers are counted as "during the fault" (default: until it returns).

FaultFn = Callable[[Harness, Run], Awaitable[dict[str, Any]]]


async def kill_router(h: Harness, run: Run) -> dict[str, Any]:
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    await h.suite.kill("router2")
    await asyncio.sleep(2)  # the replica stays dead this long before Kubernetes restarts it
    await h.start_router("router2")
    return {"fault": "router2 SIGKILLed, restarted after 2 s", "struck": struck}


async def redis_outage(h: Harness, run: Run) -> dict[str, Any]:
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    await asyncio.to_thread(h.redis.stop)
    await asyncio.sleep(5)  # the outage itself
    healed = time.monotonic()
    await asyncio.to_thread(h.redis.start)
    return {"fault": "Redis killed for 5 s, restarted empty", "struck": struck, "healed": healed}


async def postgres_outage(h: Harness, run: Run) -> dict[str, Any]:
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    await asyncio.to_thread(h.postgres.stop, "immediate")
    await asyncio.sleep(3)  # the outage itself
    await asyncio.to_thread(h.postgres.start)
    return {
        "fault": "PostgreSQL stopped (-m immediate: a crash, WAL replayed) for 3 s, restarted",
        "struck": struck,
    }


async def freeze_holder(h: Harness, run: Run) -> dict[str, Any]:
    """SIGSTOP router1 (and with it every lock it holds and their renewals) past the
    locks' TTL, three times during the run, so the other replica takes the locks over."""
    frozen_s = 3 * LOCK_TTL_MS / 1000
    struck = None
    for share in (TRIGGER, 0.5, 0.7):
        await run.sender.progress(share)
        if run.sender.report.acked >= run.sender.report.posts:
            break
        struck = struck or time.monotonic()
        h.suite.freeze("router1")
        await asyncio.sleep(frozen_s)  # frozen well past its locks' TTL
        h.suite.thaw("router1")
    return {
        "fault": f"router1 SIGSTOPped for {frozen_s:g} s (lock TTL {LOCK_TTL_MS / 1000:g} s)"
        " at 30%, 50% and 70% of the run, then SIGCONT",
        "struck": struck or time.monotonic(),
    }


async def kill_gateway(h: Harness, run: Run) -> dict[str, Any]:
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    await h.suite.kill("gateway2")
    await asyncio.sleep(2)
    await h.start_gateway("gateway2")
    return {"fault": "gateway2 SIGKILLed, restarted after 2 s", "struck": struck}


async def move_page(h: Harness, run: Run) -> dict[str, Any]:
    """`pagewire pages connect … --move` of one of the two pages, to a third account."""
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    answer = await h.connect_page(MOVED_PAGE, MOVED_TO, move=True)
    run.notes["moved_at_ms"] = now_ms()  # every batch that starts from now reads the move
    run.notes["cli"] = answer
    async with await psycopg.AsyncConnection.connect(h.database_url, autocommit=True) as conn:
        row = await (
            await conn.execute(
                "SELECT account_id FROM router.pages WHERE platform = 'FACEBOOK' AND page_id = %s",
                (MOVED_PAGE,),
            )
        ).fetchone()
    run.notes["router_account_after_move"] = row[0] if row else None
    return {
        "fault": f"page {MOVED_PAGE} moved from {PAGES[MOVED_PAGE]} to {MOVED_TO}"
        " (pages connect --move)",
        "struck": struck,
    }


async def purge_page(h: Harness, run: Run) -> dict[str, Any]:
    """`pagewire pages disconnect --purge` of the page a third of the traffic goes to."""
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    run.notes["purge_started_ms"] = now_ms()
    answer = await h.suite.cli(
        "pages", "disconnect", "--platform", "facebook", "--page-id", PURGE_PAGE, "--purge"
    )
    run.notes["purge_returned_ms"] = now_ms()
    run.notes["cli"] = answer.strip()
    return {
        "fault": f"page {PURGE_PAGE} disconnected with --purge (a third of the conversations)",
        "struck": struck,
    }


async def freeze_redis(h: Harness, run: Run) -> dict[str, Any]:
    """SIGSTOP Redis longer than the gateway's Ingest deadline: every command hangs."""
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    run.notes["struck_ms"] = now_ms()
    await asyncio.to_thread(h.redis.freeze)
    await asyncio.sleep(REDIS_FREEZE_S)
    h.redis.thaw()
    run.notes["healed_ms"] = now_ms()
    return {
        "fault": f"Redis SIGSTOPped for {REDIS_FREEZE_S:g} s (Ingest deadline"
        f" {INGEST_TIMEOUT_S:g} s), then SIGCONT",
        "struck": struck,
        "healed": time.monotonic(),
    }


async def stop_subscriptions(h: Harness, run: Run) -> dict[str, Any]:
    """SIGKILL the subscriptions service; start it again after the outage."""
    await run.sender.progress(TRIGGER)
    struck = time.monotonic()
    run.notes["struck_ms"] = now_ms()
    await h.suite.kill("subscriptions")
    await asyncio.sleep(run.size.subscriptions_down_s)
    healed = time.monotonic()
    run.notes["healed_ms"] = now_ms()
    run.notes["log_at_restart"] = await log_counts(h.database_url)
    await h.suite.start("subscriptions")
    return {
        "fault": f"subscriptions SIGKILLed, started again after"
        f" {run.size.subscriptions_down_s:g} s",
        "struck": struck,
        "healed": healed,
    }


# ---- what some scenarios add: traffic after the run, and verdicts of their own ------------
# An epilogue runs once the run is over and the suite healed, before the log is drained;
# a verdict runs after the comparison, adds its figures to the result and returns the
# reasons it fails (none: it passes).

EpilogueFn = Callable[[Harness, Run], Awaitable[None]]
VerdictFn = Callable[[Harness, Run, dict[str, Any]], Awaitable[list[str]]]


async def acks_kept_flowing(h: Harness, run: Run, result: dict[str, Any]) -> list[str]:
    """The ACK path does not depend on what the fault took down: while it lasted the
    gateways answered 200, and nothing else."""
    during = result["answers_during_fault"]
    other = {k: v for k, v in during.items() if k != "200"}
    failures = []
    if not during.get("200"):
        failures.append("no 200 while the fault lasted")
    if other:
        failures.append(f"answers other than 200 while the fault lasted: {other}")
    return failures


async def moved_verdict(h: Harness, run: Run, result: dict[str, Any]) -> list[str]:
    page_users = [
        c.user for c in run.workload.conversations + run.workload.references if c.page == MOVED_PAGE
    ]
    moved = await asyncio.to_thread(
        move_verdict, h.database_url, MOVED_PAGE, MOVED_TO, run.notes["moved_at_ms"], page_users
    )
    result["move"] = {
        **moved,
        "router_account_after_move": run.notes["router_account_after_move"],
        "cli": run.notes["cli"],
    }
    failures = []
    if run.notes["router_account_after_move"] != MOVED_TO:
        failures.append(
            f"router.pages says {run.notes['router_account_after_move']!r} once the move returned"
        )
    if moved["conversations_in_other_accounts"]:
        failures.append(f"{moved['conversations_in_other_accounts']} conversations not moved")
    if moved["changes_after_move_in_other_accounts"]:
        failures.append(
            f"{moved['changes_after_move_in_other_accounts']} feed changes after the move"
            " in another account's feed"
        )
    if not moved["changes_after_move_in_new_account"]:
        failures.append("no feed change after the move: the move was not under traffic")
    # Leave the harness as it was for the scenarios after this one.
    await h.connect_page(MOVED_PAGE, PAGES[MOVED_PAGE], move=True)
    return failures


async def resend_purged(h: Harness, run: Run) -> None:
    """Meta redelivers every body with the purged page's events that was acknowledged
    before the purge, and the page's users write new messages after it."""
    struck = run.notes["struck"]
    again = [
        body
        for index, body in enumerate(run.posts)
        if run.sender.acked_at.get(index, struck) < struck
        and any(page == PURGE_PAGE for page, _ in event_ids(body))
    ]
    resender = MetaSender(h.gateways, APP_SECRET, h.database_url)
    report = await resender.run(again)
    run.notes["redelivered"] = report.as_dict()
    users = [
        f"9{run.tag:02d}{run.seed % 1000:03d}{n:06d}0" for n in range(run.size.fresh_after_purge)
    ]
    fresh = fresh_messages(PURGE_PAGE, users, now_ms())
    fresher = MetaSender(h.gateways, APP_SECRET, h.database_url)
    run.notes["fresh"] = (await fresher.run(fresh)).as_dict()
    run.notes["fresh_keys"] = [
        (page, event_id) for body in fresh for page, event_id in event_ids(body)
    ]


async def purged_verdict(h: Harness, run: Run, result: dict[str, Any]) -> list[str]:
    residue = await asyncio.to_thread(purge_residue, h.database_url, PURGE_PAGE)
    async with await psycopg.AsyncConnection.connect(h.database_url, autocommit=True) as conn:
        fresh_states = dict(
            await (
                await conn.execute(
                    "SELECT state, count(*) FROM router.events WHERE platform = 'FACEBOOK'"
                    " AND page_id = %s AND event_id = ANY(%s) GROUP BY state",
                    (PURGE_PAGE, [event_id for _, event_id in run.notes["fresh_keys"]]),
                )
            ).fetchall()
        )
    page_events = [k for body in run.posts for k in event_keys(body) if k[0] == PURGE_PAGE]
    newest = max((k[2] for k in page_events), default=0)
    redelivered, fresh = run.notes["redelivered"], run.notes["fresh"]
    result["purge"] = {
        "cli": run.notes["cli"],
        "purge_started_ms": run.notes["purge_started_ms"],
        "purge_returned_ms": run.notes["purge_returned_ms"],
        "page_events_sent": len({k[1] for k in page_events}),
        "redelivered_posts": redelivered["posts"],
        "redelivered_acked": redelivered["acked"],
        "redelivered_acked_not_committed": redelivered["acked_not_committed"],
        "fresh_messages_sent": fresh["posts"],
        "fresh_states": fresh_states,
        **residue,
    }
    failures = []
    if residue["tombstone_ms"] is None or residue["tombstone_ms"] < newest:
        failures.append(f"tombstone {residue['tombstone_ms']} does not cover the page's events")
    left = {table: n for table, n in residue["rows"].items() if n}
    if left:
        failures.append(f"rows of the purged page came back: {left}")
    if redelivered["unacked"] or fresh["unacked"]:
        failures.append("a redelivered or fresh body was not answered 200")
    if redelivered["acked_not_committed"] or fresh["acked_not_committed"]:
        failures.append("a 200 for an event neither in the log nor covered by the tombstone")
    if fresh_states != {"parked": len(run.notes["fresh_keys"])}:
        failures.append(f"fresh events of the purged page are {fresh_states}, not all parked")
    return failures


async def applied_while_down(h: Harness, run: Run, result: dict[str, Any]) -> list[str]:
    """Subscriptions down: the router knows its pages, so it applies without asking."""
    failures = await acks_kept_flowing(h, run, result)
    applied = await asyncio.to_thread(
        applied_between, h.database_url, run.notes["struck_ms"], run.notes["healed_ms"]
    )
    result["applied_while_down"] = applied
    result["log_at_restart"] = run.notes["log_at_restart"]
    if not applied:
        failures.append("nothing was applied while subscriptions was down")
    return failures


async def redis_frozen(h: Harness, run: Run, result: dict[str, Any]) -> list[str]:
    failures = await acks_kept_flowing(h, run, result)
    result["applied_while_frozen"] = await asyncio.to_thread(
        applied_between, h.database_url, run.notes["struck_ms"], run.notes["healed_ms"]
    )
    return failures


@dataclass(frozen=True)
class Scenario:
    title: str
    fault: FaultFn
    hot: bool = False  # few conversations, many items each (scenario 4)
    pages: tuple[str, ...] = tuple(PAGES)  # where its conversations are
    exclude: tuple[str, ...] = ()  # pages left out of the lost/twin comparison
    epilogue: EpilogueFn | None = None
    verdict: VerdictFn | None = None


SCENARIOS: dict[str, Scenario] = {
    "1_router_killed": Scenario("a router replica SIGKILLed mid-run", kill_router),
    "2_redis_restarted_empty": Scenario(
        "Redis stopped for 5 s and restarted empty", redis_outage, verdict=acks_kept_flowing
    ),
    "3_postgres_restarted": Scenario("PostgreSQL stopped and restarted", postgres_outage),
    "4_lock_holder_frozen": Scenario(
        "a lock holder frozen past its TTL, then resumed", freeze_holder, hot=True
    ),
    "5_gateway_killed": Scenario("a gateway replica SIGKILLed mid-run", kill_gateway),
    "6_page_moved": Scenario(
        "a page moved to another account under traffic", move_page, verdict=moved_verdict
    ),
    "7_page_purged": Scenario(
        "a page purged under traffic, then its bodies redelivered",
        purge_page,
        pages=(*PAGES, PURGE_PAGE),
        exclude=(PURGE_PAGE,),
        epilogue=resend_purged,
        verdict=purged_verdict,
    ),
    "8_redis_frozen": Scenario(
        "Redis frozen (SIGSTOP) past the Ingest deadline", freeze_redis, verdict=redis_frozen
    ),
    "9_subscriptions_down": Scenario(
        "the subscriptions service down", stop_subscriptions, verdict=applied_while_down
    ),
}


async def run_scenario(h: Harness, key: str, size: Size, seed: int) -> dict[str, Any]:
    """One scenario end to end; the result says whether it passed and why not."""
    scenario = SCENARIOS[key]
    tag = int(key.split("_", 1)[0])
    workload = Workload.build(
        tag,
        size.hot_conversations if scenario.hot else size.conversations,
        size.hot_items if scenario.hot else size.items,
        seed,
        scenario.pages,
    )
    posts = workload.chaos_posts(seed)
    sender = MetaSender(h.gateways, APP_SECRET, h.database_url)
    run = Run(key, tag, size, seed, workload, posts, sender)
    failed_before = (await log_counts(h.database_url))["failed"]
    logs_before = {line: h.log_count(line) for line in (STALE_LINE, WAITING_LINE)}
    failures: list[str] = []
    began = time.monotonic()

    async def fault() -> dict[str, Any]:
        info = await scenario.fault(h, run)
        info.setdefault("healed", time.monotonic())
        return info

    strike = asyncio.create_task(fault())
    report = await sender.run(posts)
    fault_info: dict[str, Any] = {"fault": "not reached"}
    if report.acked >= TRIGGER * report.posts:
        # It struck mid-run; its restart may outlast the sending. A fault that failed (a
        # process that would not restart, a CLI command refused) fails the scenario.
        try:
            fault_info = await strike
        except Exception as exc:
            fault_info = {"fault": f"the fault failed: {exc}"}
            failures.append(fault_info["fault"])
    else:
        strike.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await strike
    struck = fault_info.pop("struck", None)
    healed = fault_info.pop("healed", time.monotonic())
    run.notes["struck"] = struck if struck is not None else healed
    await h.heal()
    if scenario.epilogue is not None and struck is not None:
        await scenario.epilogue(h, run)
    # Checkpoint 2: every entry applied — none pending — before the twins, and after them.
    after_run = await drain(h.database_url, DRAIN_TIMEOUT_S)
    twins: dict[str, Any] = {}
    try:
        twins = (
            await deliver_in_order(
                h.gateways[0],
                APP_SECRET,
                workload.reference_posts(scenario.exclude),
                h.database_url,
            )
        ).as_dict()
    except AssertionError as exc:
        failures.append(str(exc))
    after_twins = await drain(h.database_url, DRAIN_TIMEOUT_S)
    verdict = await asyncio.to_thread(compare, h.database_url, workload.without(scenario.exclude))
    result: dict[str, Any] = {
        "scenario": key,
        "title": scenario.title,
        "conversations": len(workload.conversations),
        "events_sent": sum(len(c.items) for c in workload.conversations),
        "deliveries": sum(len(event_ids(p)) for p in posts),  # with the 10% sent twice
        **fault_info,
        "down_s": round(healed - struck, 2) if struck is not None else 0.0,
        "answers_during_fault": dict(
            sorted(sender.answers_during(struck, healed).items()) if struck is not None else {}
        ),
        "sender": report.as_dict(),
        "log_after_run": after_run,
        "log_after_twins": after_twins,
        "pending_after_run": after_run["pending"],
        "failed_entries": after_twins["failed"] - failed_before,
        "in_order_twins": twins,
        **verdict,
        "log_lines": {
            "stale_writes_refused": h.log_count(STALE_LINE) - logs_before[STALE_LINE],
            "apply_waiting_for_dependency": h.log_count(WAITING_LINE) - logs_before[WAITING_LINE],
        },
    }
    if scenario.hot:
        result["stale_writes_rejected"] = result["log_lines"]["stale_writes_refused"]
    if after_run["pending"] or after_twins["pending"]:
        failures.append(
            f"entries still pending {DRAIN_TIMEOUT_S:g} s after the run: {after_run['pending']}"
            f" (after the twins: {after_twins['pending']})"
        )
    if result["failed_entries"]:
        failures.append(f"{result['failed_entries']} log entries failed")
    if scenario.verdict is not None and struck is not None:
        failures += await scenario.verdict(h, run, result)
    if report.unacked:
        failures.append(f"{report.unacked} POSTs never acknowledged")
    if report.acked_not_committed:
        failures.append(f"{len(report.acked_not_committed)} events acknowledged before commit")
    if result["fault"] == "not reached":
        failures.append("the fault never struck")
    if not verdict["passed"]:
        failures.append("lost, not applied, duplicated or different from the in-order twin")
    result["failures"] = failures
    result["passed"] = not failures
    result["acked_not_committed_examples"] = report.acked_not_committed[:3]
    result["seconds"] = round(time.monotonic() - began, 1)
    return result
