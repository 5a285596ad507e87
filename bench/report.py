"""The results as a table (what `make bench` prints and docs/PERFORMANCE.md quotes),
and the shape every results file must have."""

from __future__ import annotations

from typing import Any

from bench.locks import STRATEGIES


def _yes(met: bool) -> str:
    return "met" if met else "MISSED"


def table(r: dict[str, Any]) -> str:
    """A Markdown table of the figures, each against its target where it has one."""
    floor, thr, lat, burst, t = (
        r["floor"],
        r["throughput"],
        r["latency"],
        r["burst"],
        r["targets"],
    )
    ack, rt = lat["ack_ms"], floor["redis_set_nx_px"]
    rows = [
        (
            "floor: PostgreSQL single-row upserts/s, 8 connections",
            f"{floor['postgres_inserts_per_s']:,.0f} ({floor['postgres_floor_by']})",
            "",
        ),
        ("floor: same, one asyncio psycopg process", f"{floor['psycopg_inserts_per_s']:,.0f}", ""),
        (
            "floor: Redis SET NX PX round trip p50 / p99",
            f"{rt['p50_us']:.0f} / {rt['p99_us']:.0f} µs",
            "",
        ),
        (
            "throughput: committed events/s, ACK p99 < 1 s",
            f"{thr['events_per_s']:,.0f} ({thr['from']})",
            "",
        ),
        (
            "throughput / floor",
            f"{thr['ratio_to_floor']:.3f} (/ psycopg floor {thr['ratio_to_python_floor']:.3f})",
            f"≥ 0.5 — {_yes(t['end_to_end_vs_floor']['met'])}",
        ),
        (
            f"ACK p50 / p95 / p99 at {lat['offered_events_per_s']:,.0f} events/s offered",
            f"{ack['p50']:.1f} / {ack['p95']:.1f} / {ack['p99']:.1f} ms",
            f"p99 ≤ 25 ms at 1,000/s — {_yes(t['ack_p99_at_1000']['met'])}",
        ),
        (
            f"burst: {burst['events']} events, 1 conversation, {burst['posts']} concurrent POSTs",
            f"{burst['drain_s']:.3f} s drain, {burst['events_per_s']:,.0f} events/s"
            f" (median of {burst['repeats']})",
            f"≥ 1,000/s — {_yes(t['burst']['met'])}",
        ),
        (
            "burst: duplicates / missing / order",
            f"{burst['duplicates']} / {burst['missing']} / "
            + ("in order" if burst["order_ok"] else "OUT OF ORDER"),
            "0 duplicates",
        ),
    ]
    cost = r.get("router_in_process")
    if cost:
        compiled = cost["statements_by_compile_cache"].get("NO_CACHE_KEY", 0)
        rows.append(
            (
                "router in-process, per single-message event",
                f"{cost['wall_ms_per_event']:.1f} ms wall, {cost['cpu_ms_per_event']:.1f} ms CPU,"
                f" {cost['sql_statements_per_event']:g} SQL statements ({compiled:g} compiled"
                f" afresh), lock {cost['lock_ms_per_event']:.2f} ms + fence"
                f" {cost['fence_ms_per_event']:.2f} ms",
                "",
            )
        )
    for strategy, res in r.get("lock_ablation", {}).items():
        rows.append(
            (
                f"lock ablation, {strategy}: {res['events']} events in {res['posts']} POSTs",
                f"{res['drain_s']:.3f} s, {res['events_per_s']:,.0f} events/s,"
                f" {res['resent_posts']} POSTs resent after a 503",
                "",
            )
        )
    for name, res in r.get("resources", {}).items():
        peak = f", peak {res['after_load']['peak_rss_mb']:.0f} MB" if "after_load" in res else ""
        idle = res["idle"]["rss_mb"]
        rows.append(
            (
                f"resources: {name}",
                f"SERVING in {res['serving_s']:.2f} s, idle RSS {idle:.0f} MB{peak}",
                "",
            )
        )
    rows.append(
        (
            "resources: worst idle RSS / slowest SERVING",
            f"{t['idle_rss']['value']:.0f} MB / {t['serving']['value']:.2f} s",
            f"≤ 80 MB — {_yes(t['idle_rss']['met'])}; ≤ 2 s — {_yes(t['serving']['met'])}",
        )
    )
    lines = ["| figure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


REQUIRED = {
    "schema": int,
    "mode": str,
    "machine": dict,
    "floor": dict,
    "throughput": dict,
    "latency": dict,
    "burst": dict,
    "lock_ablation": dict,
    "resources": dict,
    "targets": dict,
}


def problems(r: dict[str, Any]) -> list[str]:
    """What is missing or malformed in a results file (empty: well-formed). Speeds are
    never judged here."""
    out = [
        f"{key}: missing or not {kind.__name__}"
        for key, kind in REQUIRED.items()
        if not isinstance(r.get(key), kind)
    ]
    if out:
        return out
    numbers = {
        "floor.postgres_inserts_per_s": r["floor"].get("postgres_inserts_per_s"),
        "floor.redis_set_nx_px.p50_us": r["floor"].get("redis_set_nx_px", {}).get("p50_us"),
        "throughput.events_per_s": r["throughput"].get("events_per_s"),
        "latency.ack_ms.p99": r["latency"].get("ack_ms", {}).get("p99"),
        "burst.drain_s": r["burst"].get("drain_s"),
    }
    out += [f"{k}: not a number" for k, v in numbers.items() if not isinstance(v, int | float)]
    if r["burst"].get("duplicates") != 0:
        out.append(f"burst.duplicates: {r['burst'].get('duplicates')} (must be 0)")
    if r["burst"].get("missing") != 0:
        out.append(f"burst.missing: {r['burst'].get('missing')}")
    if r["burst"].get("order_ok") is not True:
        out.append("burst.order_ok: stored order differs from Meta's timestamps")
    missing = [s for s in STRATEGIES if s not in r["lock_ablation"]]
    if missing:
        out.append(f"lock_ablation: no result for {missing}")
    for service in ("gateway", "router1", "router2", "tokens", "subscriptions"):
        res = r["resources"].get(service)
        if not res or not isinstance(res.get("serving_s"), float) or res["idle"]["rss_mb"] <= 0:
            out.append(f"resources.{service}: missing")
    return out
