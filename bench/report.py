"""The results as tables (what `make bench` prints and docs/PERFORMANCE.md quotes),
and the shape every results file must have."""

from __future__ import annotations

from typing import Any

from bench.burst import VARIANTS

TARGETS = (
    "durable_ack_vs_ceiling",
    "applied_vs_ceiling",
    "ack_p99_at_1000",
    "ack_p99_at_5000",
    "apply_lag_p99_at_1000",
    "burst_applied",
    "apply_statements_per_event",
    "idle_rss",
)


def _yes(met: bool) -> str:
    return "met" if met else "MISSED"


def table(r: dict[str, Any]) -> str:
    """A Markdown table of the figures, each against its target where it has one."""
    floor, thr, lat, burst, t = (
        r["floor"],
        r["throughput"],
        r["latency"],
        r["burst"],
        r["targets_issue4"],
    )
    ack, rt = lat["ack_ms"], floor["redis_set_nx_px"]
    rows = [
        *_ceiling_rows(r.get("ceiling", {})),
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
            f"apply lag p50 / p99 at {lat['offered_events_per_s']:,.0f} events/s offered",
            f"{lat.get('apply_lag_ms', {}).get('p50', 0):.0f} /"
            f" {lat.get('apply_lag_ms', {}).get('p99', 0):.0f} ms (log commit → visible)",
            "",
        ),
        *_offered_rows(r),
        (
            f"burst: {burst['events']} events, 1 conversation, {burst['posts']} concurrent POSTs",
            f"{burst['drain_s']:.3f} s drain, {burst['events_per_s']:,.0f} events/s"
            f" (median of {burst['repeats']}); all visible {burst.get('visible_s')} s,"
            f" {burst.get('visible_events_per_s')} events/s",
            f"≥ 1,000/s — {_yes(t['burst']['met'])}",
        ),
        (
            "burst: duplicates / missing / order",
            f"{burst['duplicates']} / {burst['missing']} / "
            + ("in order" if burst["order_ok"] else "OUT OF ORDER"),
            "0 duplicates",
        ),
    ]
    rows += _in_process_rows(r.get("router_in_process"))
    rows += _ablation_rows(r.get("lock_ablation", {}), r.get("send_lock_ablation", {}))
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
    lines = ["| figure | value | target (issue 4) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n\n" + targets_table(r.get("targets", {}))


def _in_process_rows(cost: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not cost:
        return []
    if "error" in cost:
        return [("router in-process", f"not measured: {cost['error'][:120]}", "")]
    append, alone, applied = cost["append"], cost["append_one_caller"], cost["apply"]
    return [
        (
            f"router in-process, append (group commit), {append['callers']} concurrent callers",
            f"{append['events_per_s']:,.0f} events/s, {append['cpu_us_per_event']:.0f} µs CPU"
            f" per event, {append['events_per_commit']:g} events per commit,"
            f" {append['statements_per_event']:.3f} statements per event,"
            f" call p50 / p99 {append['call_ms']['p50']:.1f} / {append['call_ms']['p99']:.1f} ms",
            "",
        ),
        (
            "router in-process, append, one caller",
            f"{alone['events_per_s']:,.0f} events/s, {alone['cpu_us_per_event']:.0f} µs CPU per"
            f" event, call p50 / p99 {alone['call_ms']['p50']:.1f} / {alone['call_ms']['p99']:.1f}"
            " ms",
            "",
        ),
        (
            f"router in-process, apply, batches of {applied['batch']} mixed events"
            f" ({applied['rounds']} rounds)",
            f"{applied['events_per_s']:,.0f} events/s, {applied['cpu_us_per_event']:.0f} µs CPU"
            f" per event, {applied['statements_per_batch']:g} statements per batch"
            f" ({applied['first_batch_statements_per_event']:.3f} per event, first batch),"
            f" {applied['wall_ms_per_batch']:.0f} ms per batch, of which SQL"
            f" {applied['sql_ms_per_batch']:.0f} ms and Redis"
            f" {applied['redis_lock_ms_per_batch']:.0f} ms",
            "",
        ),
    ]


def _ablation_rows(busy: dict[str, Any], send: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    if "error" in busy:
        rows.append(("busy-retry ablation", f"not measured: {busy['error'][:120]}", ""))
        busy = {}
    for variant, res in busy.items():
        visible = res.get("visible_s")
        rows.append(
            (
                f"busy-retry ablation, {variant} ms: {res['events']} events in {res['posts']}"
                " POSTs, 2 routers",
                (
                    f"all visible {visible:.3f} s, {res['visible_events_per_s']:,.0f} events/s"
                    if visible is not None
                    else "not all visible"
                )
                + f"; last 200 {res['drain_s']:.3f} s; busy conversations"
                f" {res.get('busy_conversations')}, batches {res.get('batches_applied')}"
                f" applied + {res.get('batches_only_given_back')} only given back",
                "",
            )
        )
    if "error" in send:
        rows.append(("SendMessage lock wait ablation", f"not measured: {send['error'][:120]}", ""))
        send = {}
    for strategy, res in send.items():
        if not isinstance(res, dict):
            continue
        rows.append(
            (
                f"SendMessage lock wait, {strategy}: {send['holders']} sends into one"
                f" conversation, {send['hold_ms']:g} ms under the lock each",
                f"{res['seconds']:.3f} s, {res['sends_per_s']:,.0f} sends/s, lock busy"
                f" {100 * res['busy_fraction']:.0f}% of the time, {res['aborted']} ABORTED",
                "",
            )
        )
    return rows


def _ceiling_rows(c: dict[str, Any]) -> list[tuple[str, str, str]]:
    if not c:
        return []
    best = next((lv for lv in c["levels"] if lv["connections"] == c["connections"]), None)
    ack = c["ack_ms"] or {"p50": 0.0, "p99": 0.0}
    rows = [
        (
            "ceiling: events/s acknowledged, ACK p99 < 1 s (group commit, same PostgreSQL)",
            f"{c['events_per_s']:,.0f} events/s, {c['posts_per_s']:,.0f} POSTs/s,"
            f" ACK p50 / p99 {ack['p50']:.1f} / {ack['p99']:.1f} ms"
            f" ({c['connections']} connections, {c['generator']})",
            "",
        ),
        (
            "ceiling: every 200 a committed row",
            ("yes" if c["every_200_committed"] else "NO")
            + (
                f" ({best['posts_committed']:,} rows, {best['rows_per_commit']:g} per commit,"
                f" ceiling process {best['cpu_cores_ceiling']:.2f} cores)"
                if best
                else ""
            ),
            "",
        ),
    ]
    py = c.get("python_driver")
    if py:
        rows.append(
            (
                "ceiling: same, by the Python driver",
                f"{py['events_per_s']:,.0f} events/s, {py['posts_per_s']:,.0f} POSTs/s,"
                f" ACK p99 {py['ack_ms']['p99']:.1f} ms",
                "",
            )
        )
    for eps, step in c.get("open_loop", {}).items():
        a = step["ack_ms"]
        rows.append(
            (
                f"ceiling: ACK p50 / p99 at {int(eps):,} events/s offered (open loop)",
                f"{a['p50']:.1f} / {a['p99']:.1f} ms",
                "",
            )
        )
    bare = c.get("without_storage")
    if bare:
        rows.append(
            (
                "ceiling without storage (HTTP, signature, JSON)",
                f"{bare['events_per_s']:,.0f} events/s, {bare['posts_per_s']:,.0f} POSTs/s,"
                f" ACK p99 {bare['ack_ms']['p99']:.1f} ms",
                "",
            )
        )
    return rows


def _offered_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for eps, step in r.get("offered", {}).items():
        a, lag = step["ack_ms"], step["apply_lag_ms"]
        others = sum(n for s, n in step["statuses"].items() if s != "200")
        rows.append(
            (
                f"ACK p50 / p99 at {int(eps):,} events/s offered, exactly",
                f"{a['p50']:.1f} / {a['p99']:.1f} ms, committed"
                f" {step['committed_events_per_s']:,.0f}/s, {others} non-200,"
                f" apply lag p99 {lag['p99']:.0f} ms",
                "",
            )
        )
    applied = r.get("applied", {})
    if "events_per_s" in applied:
        rows.append(
            (
                f"applied (visible) events/s over {applied['seconds']:g} s",
                f"{applied['events_per_s']:,.0f} at {applied['offered_events_per_s']:,.0f}"
                f" offered, pending {applied['pending_at_middle']} → {applied['pending_at_end']}"
                f" (max {applied.get('pending_max')}, {applied.get('pending_basis', 'rows')});"
                f" ≈ {applied.get('batching', {}).get('events_per_commit')} events per group"
                f" commit, ≈ {applied.get('batching', {}).get('events_per_batch')} per apply batch",
                "",
            )
        )
    return rows


def _figure(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def targets_table(t: dict[str, dict[str, Any]]) -> str:
    """Issue 13's targets: name, figure, target, met, note."""
    lines = ["| target | figure | target value | met | note |", "|---|---|---|---|---|"]
    for name in TARGETS:
        row = t.get(name)
        if row is None:
            continue
        note = str(row.get("note", "")).replace("|", "/")
        lines.append(
            f"| `{name}` | {_figure(row['figure'])} | {row['target']} |"
            f" {'met' if row['met'] else 'MISSED'} | {note} |"
        )
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
    "ceiling": dict,
    "offered": dict,
    "targets": dict,
    "targets_issue4": dict,
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
        "ceiling.events_per_s": r["ceiling"].get("events_per_s"),
    }
    out += [f"{k}: not a number" for k, v in numbers.items() if not isinstance(v, int | float)]
    if r["burst"].get("duplicates") != 0:
        out.append(f"burst.duplicates: {r['burst'].get('duplicates')} (must be 0)")
    if r["burst"].get("missing") != 0:
        out.append(f"burst.missing: {r['burst'].get('missing')}")
    if r["burst"].get("order_ok") is not True:
        out.append("burst.order_ok: stored order differs from Meta's timestamps")
    if r["ceiling"].get("every_200_committed") is not True:
        out.append("ceiling.every_200_committed: a 200 without its committed row")
    for name in TARGETS:
        row = r["targets"].get(name)
        if not isinstance(row, dict) or not {"figure", "target", "met"} <= row.keys():
            out.append(f"targets.{name}: missing or without figure/target/met")
        elif not isinstance(row["met"], bool):
            out.append(f"targets.{name}.met: not true/false")
        elif row["figure"] is None and (row["met"] or not row.get("note")):
            out.append(f"targets.{name}: no figure, so met must be false with a note")
    missing = [v for v in VARIANTS if v not in r["lock_ablation"]]
    if missing:
        out.append(f"lock_ablation: no result for {missing}")
    for service in ("gateway", "router1", "router2", "tokens", "subscriptions"):
        res = r["resources"].get(service)
        if not res or not isinstance(res.get("serving_s"), float) or res["idle"]["rss_mb"] <= 0:
            out.append(f"resources.{service}: missing")
    return out
