"""Where a run stands against its targets: issue 13's table, and issue 4's kept for comparison.

Each of issue 13's targets is `{figure, target, met}` (plus a `note` when the figure
needs explaining); a figure this run did not measure is `None`, never met, and says
why. A miss is reported, never a failed run.
"""

from __future__ import annotations

from typing import Any

TARGET_LATENCY_EPS = 1000


def _target(figure: float | None, target: str, met: bool, note: str | None = None) -> dict:
    out: dict[str, Any] = {
        "figure": figure,
        "target": target,
        "met": bool(met and figure is not None),
    }
    if note:
        out["note"] = note
    return out


def _not_measured(target: str, note: str) -> dict[str, Any]:
    return _target(None, target, False, note)


def _ratio(value: float | None, ceiling: float | None) -> float | None:
    if value is None or not ceiling:
        return None
    return round(value / ceiling, 4)


def _step_note(step: dict[str, Any]) -> str | None:
    """Why an explicit offered rate did not hold, or None when it did."""
    if step.get("sustained"):
        return None
    others = {s: n for s, n in step["statuses"].items() if s != "200"}
    note = (
        f"offered {step['offered_events_per_s']:,.0f} events/s not sustained: committed"
        f" {step['committed_events_per_s']:,.0f}/s, non-200 {others or 'none'}"
    )
    return f"{note}; {step['note']}" if step.get("note") else note


def issue13(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets of issue 13 (the event-log router), against the ceiling of this run."""
    ceiling = results.get("ceiling", {})
    ceiling_eps = ceiling.get("events_per_s") or None
    throughput = results["throughput"]
    out: dict[str, dict[str, Any]] = {}

    ratio = _ratio(throughput["events_per_s"], ceiling_eps)
    out["durable_ack_vs_ceiling"] = _target(
        ratio,
        ">= 0.5",
        ratio is not None and ratio >= 0.5,
        f"{throughput['events_per_s']:,.0f} events/s acknowledged and committed with ACK p99"
        f" < 1 s ({throughput['from']}) / ceiling {ceiling_eps or 0:,.0f} events/s",
    )

    applied = results.get("applied")
    if applied and "events_per_s" in applied:
        ratio = _ratio(applied["events_per_s"], ceiling_eps)
        growing = applied["pending_growing"]
        out["applied_vs_ceiling"] = _target(
            ratio,
            ">= 0.25, sustained 20 s, pending not growing",
            ratio is not None and ratio >= 0.25 and not growing and applied["seconds"] >= 20,
            f"{applied['events_per_s']:,.0f} events/s visible over {applied['seconds']:g} s at"
            f" {applied['offered_events_per_s']:,.0f} offered, pending"
            f" {applied['pending_at_middle']} → {applied['pending_at_end']}"
            f" ({'growing' if growing else 'not growing'};"
            f" {applied.get('pending_basis', 'reconstructed from the rows')}); {applied['basis']}",
        )
    else:
        out["applied_vs_ceiling"] = _not_measured(
            ">= 0.25, sustained 20 s, pending not growing",
            (applied or {}).get("note", "no applied step in this run"),
        )

    offered = results.get("offered", {})
    for eps, limit in ((1000, 10.0), (5000, 25.0)):
        step = offered.get(str(eps))
        target = f"<= {limit:g} ms at {eps:,} events/s offered"
        if step is None:
            out[f"ack_p99_at_{eps}"] = _not_measured(
                target, f"{eps:,} events/s not offered in a {results['mode']} run"
            )
            continue
        p99 = step["ack_ms"]["p99"] if step["ack_ms"] else None
        out[f"ack_p99_at_{eps}"] = _target(
            p99,
            target,
            bool(step["sustained"]) and p99 is not None and p99 <= limit,
            _step_note(step),
        )

    step = offered.get(str(TARGET_LATENCY_EPS))
    lag = (step or {}).get("apply_lag_ms")
    target = "<= 250 ms at 1,000 events/s offered"
    if lag and lag["events"]:
        notes = [lag["basis"]]
        if lag["not_visible"]:
            notes.append(f"{lag['not_visible']} events not visible after the wait")
        if _step_note(step or {}):
            notes.append(str(_step_note(step or {})))
        sustained = (results.get("latency") or {}).get("apply_lag_ms")
        if sustained and sustained["events"] and not (step and step["sustained"]):
            notes.append(
                f"at {results['latency']['offered_events_per_s']:,.0f} events/s offered (the"
                f" latency step) the lag p50 / p99 was {sustained['p50']:g} /"
                f" {sustained['p99']:g} ms"
            )
        out["apply_lag_p99_at_1000"] = _target(
            lag["p99"],
            target,
            bool(step and step["sustained"]) and lag["p99"] <= 250 and not lag["not_visible"],
            "; ".join(notes),
        )
    else:
        out["apply_lag_p99_at_1000"] = _not_measured(target, "no events logged at 1,000/s")

    burst = results["burst"]
    figure = burst.get("visible_events_per_s")
    clean = burst["duplicates"] == 0 and burst["missing"] == 0 and burst["order_ok"]
    out["burst_applied"] = _target(
        figure,
        ">= 5,000 events/s first send → all visible, 0 duplicates, in order",
        figure is not None and figure >= 5000 and clean,
        f"{burst['events']} events in {burst['posts']} POSTs, median of {burst['repeats']}:"
        f" all visible in {burst.get('visible_s')} s (last 200 at {burst['drain_s']} s),"
        f" {burst['duplicates']} duplicates, {burst['missing']} missing,"
        f" {'in order' if burst['order_ok'] else 'OUT OF ORDER'}",
    )

    statements = results.get("apply_statements", {"figure": None, "note": "not measured"})
    out["apply_statements_per_event"] = _target(
        statements["figure"],
        "<= 0.2 per event, batch of 500 mixed events",
        statements["figure"] is not None and statements["figure"] <= 0.2,
        statements.get("note"),
    )

    resources = results.get("resources", {})
    idle = {name: r["idle"]["rss_mb"] for name, r in resources.items()}
    worst = max(idle, key=lambda n: idle[n], default=None)
    out["idle_rss"] = (
        _target(round(idle[worst], 1), "<= 80 MB per service", idle[worst] <= 80, f"{worst}")
        if worst
        else _not_measured("<= 80 MB per service", "no service started")
    )
    return out


def issue4(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets of issue 4 (floor-relative), as the runs before issue 13 reported them."""
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
