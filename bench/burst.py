"""The one-conversation burst, and the same burst through routers with other busy-retry delays.

500 text messages into one new conversation (timestamps shuffled, split over 20
POSTs sent at once through the gateway, which balances over both routers); a
POST without a 200 is sent again after 250 ms, as Meta would. Measured: first
send → last 200 (`drain_s`), first send → all visible (`visible_s`, read by
bench/apply.py:visibility), then duplicates, missing and the stored order.

The ablation: apply batches never wait for a conversation's lock; a batch that
finds it busy gives that conversation's entries back with a lease of
`services.router.apply.BUSY_RETRY_MS`, so no batch claims them before. How long
that is decides how soon the burst is all visible: 0 (claim again at once), 100
(the router's) and 1000 (Chatwoot's re-enqueue after a second), each through two
routers of its own (`python -m bench.router_variant`) behind a gateway of its
own, with the routers' /metrics read around every burst: conversations found
busy (`pagewire_apply_busy_conversations_total`), batches that applied something
and batches that only gave entries back.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from bench import apply, db
from bench.bodies import burst
from bench.procs import APP_SECRET

if TYPE_CHECKING:
    from bench.run import Bench

BURST_PAGE = "109384756201938"


def _query(url: str, sql: str, *params: object) -> list[tuple]:  # type: ignore[type-arg]
    with psycopg.connect(db.plain_url(url), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


async def one_burst(bench: Bench, targets: list[str], events: int, posts: int) -> dict[str, Any]:
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
    began_ms = int(time.time() * 1000)
    pending = list(range(len(bodies)))
    resent = 0
    statuses: dict[str, int] = {}
    for _ in range(40):
        outcome = await bench.send(targets, [bodies[i] for i in pending], concurrency=len(pending))
        for status, count in outcome.statuses().items():
            statuses[status] = statuses.get(status, 0) + count
        pending = [pending[i] for i in outcome.not_ok()]
        if not pending:
            break
        resent += len(pending)
        await asyncio.sleep(0.25)  # the sender's backoff before redelivering
    drain = time.monotonic() - began
    seen = await apply.wait_visible(
        bench.url,
        began_ms - 1000,
        expected=events,
        conversation=(BURST_PAGE, user),
        timeout_s=30,
    )
    visible = [v for _, v in seen if v is not None]
    visible_s = (max(visible) - began_ms) / 1000 if len(visible) >= events else None
    stored = await _messages(bench.url, user, events)
    count = _query(
        bench.url,
        "SELECT message_count FROM router.conversations WHERE page_id = %s AND user_id = %s",
        BURST_PAGE,
        user,
    )
    return {
        "events": events,
        "posts": posts,
        "drain_s": round(drain, 3),
        "events_per_s": round(events / drain, 1),
        # First send → the last of them visible (bench/apply.py:visibility).
        "visible_s": round(visible_s, 3) if visible_s is not None else None,
        "visible_events_per_s": round(events / max(visible_s, 0.001), 1)
        if visible_s is not None
        else None,
        "stored": len(stored),
        "duplicates": len(stored) - len(set(mid for _, mid in stored)),
        "missing": len(set(expected) - set(stored)),
        "order_ok": stored == expected,
        "conversation_message_count": int(count[0][0]) if count else 0,
        "statuses": statuses,
        "resent_posts": resent,
        "unfinished_posts": len(pending),
    }


async def _messages(url: str, user: str, events: int) -> list[tuple[int, str]]:
    """The burst conversation's messages in stored order, waiting (up to 10 s) until
    all `events` are readable: a router that applies after its ACK may lag."""
    deadline = time.monotonic() + 10
    while True:
        rows = await asyncio.to_thread(
            _query,
            url,
            "SELECT m.timestamp_ms, m.mid FROM router.messages m"
            " JOIN router.conversations c ON c.id = m.conversation_id"
            " WHERE c.page_id = %s AND c.user_id = %s ORDER BY m.timestamp_ms, m.mid",
            BURST_PAGE,
            user,
        )
        if len(rows) >= events or time.monotonic() > deadline:
            return [(int(ts), mid) for ts, mid in rows]
        await asyncio.sleep(0.1)


Counters = Callable[[], Awaitable[dict[str, float]]]


async def bursts(
    bench: Bench,
    targets: list[str],
    events: int,
    posts: int,
    repeats: int,
    counters: Counters | None = None,
) -> dict:
    """`repeats` bursts, their median; with `counters`, what they moved per burst."""
    runs = []
    for _ in range(repeats):
        before = await counters() if counters else {}
        run = await one_burst(bench, targets, events, posts)
        if counters:
            after = await counters()
            run["router_counters"] = {k: round(after[k] - before.get(k, 0.0)) for k in after}
        runs.append(run)
    median = sorted(runs, key=lambda r: r["drain_s"])[len(runs) // 2]
    timed = [r for r in runs if r["visible_s"] is not None]
    visible = sorted(timed, key=lambda r: r["visible_s"])[len(timed) // 2] if timed else None
    return {
        "events": events,
        "posts": posts,
        "repeats": repeats,
        "drain_s": median["drain_s"],
        "events_per_s": median["events_per_s"],
        "visible_s": visible["visible_s"] if visible and len(timed) == len(runs) else None,
        "visible_events_per_s": visible["visible_events_per_s"]
        if visible and len(timed) == len(runs)
        else None,
        "duplicates": sum(r["duplicates"] for r in runs),
        "missing": sum(r["missing"] for r in runs),
        "order_ok": all(r["order_ok"] for r in runs),
        "resent_posts": sum(r["resent_posts"] for r in runs),
        "runs": runs,
    }


# Variant name → BUSY_RETRY_MS of its routers.
VARIANTS = {"retry:0": 0, "retry:100": 100, "retry:1000": 1000}
# The router's counters the ablation reads: name in the exposition → key in the results.
COUNTERS = {
    "pagewire_apply_busy_conversations_total": "busy_conversations",
    'pagewire_apply_batches_total{outcome="applied"}': "batches_applied",
    'pagewire_apply_batches_total{outcome="idle"}': "batches_only_given_back",
    "pagewire_fence_rejections_total": "fence_rejections",
}


async def scrape(ports: list[int]) -> dict[str, float]:
    """COUNTERS summed over the routers serving /metrics on `ports`."""
    out = dict.fromkeys(COUNTERS.values(), 0.0)
    async with httpx.AsyncClient(timeout=5) as client:
        for port in ports:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                if name in COUNTERS:
                    out[COUNTERS[name]] += float(value)
    return out


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = sorted(r["router_counters"][key] for r in runs if "router_counters" in r)
    return values[len(values) // 2] if values else None


async def ablation(bench: Bench) -> dict[str, Any]:
    """The same burst through two routers for each busy-retry delay (module docstring)."""
    out: dict[str, Any] = {}
    plan = bench.plan
    for variant, retry_ms in VARIANTS.items():
        ports = [bench.suite.free_port() for _ in (1, 2)]
        metric_ports = [bench.suite.free_port() for _ in (1, 2)]
        tag = variant.replace(":", "")
        names = [f"router-{tag}-{i}" for i in (1, 2)]
        gateway = f"gateway-{tag}"
        try:
            # Started together: their start-up is not what is measured here.
            await asyncio.gather(
                *(
                    bench.suite.start(
                        "router",
                        name=name,
                        module="bench.router_variant",
                        PAGEWIRE_ROUTER_PORT=str(port),
                        PAGEWIRE_METRICS_PORT=str(metrics_port),
                        PAGEWIRE_BENCH_BUSY_RETRY_MS=str(retry_ms),
                    )
                    for name, port, metrics_port in zip(names, ports, metric_ports, strict=True)
                ),
                bench.suite.start(
                    "gateway",
                    name=gateway,
                    PAGEWIRE_GATEWAY_PORT=str(bench.suite.free_port()),
                    PAGEWIRE_ROUTER_ADDR="ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports),
                ),
            )
            result = await bursts(
                bench,
                [bench.suite.url(gateway)],
                plan.ablation_events,
                plan.burst_posts,
                max(1, plan.burst_repeats - 1),
                counters=functools.partial(scrape, list(metric_ports)),
            )
            result["busy_retry_ms"] = retry_ms
            for key in COUNTERS.values():
                result[key] = _median(result["runs"], key)
            out[variant] = result
        finally:
            await asyncio.gather(
                *(bench.suite.stop(n) for n in [*names, gateway] if n in bench.suite.procs)
            )
    return out
