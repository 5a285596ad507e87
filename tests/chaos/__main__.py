"""`python -m tests.chaos [--short] [--only 1,3]`: every scenario, a table, and a JSON file.

Exits non-zero when any scenario lost, doubled, diverged or left an entry unapplied,
answered 200 for an event that was not committed, or failed a verdict of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from tests.chaos.scenarios import FULL, SCENARIOS, SHORT, harness, run_scenario

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _extra(r: dict[str, Any]) -> str:
    """What a scenario's own verdict measured, in a few words."""
    during = r.get("answers_during_fault", {})
    answers = ", ".join(f"{n} × {k}" for k, n in during.items()) or "none"
    out = []
    if "stale_writes_rejected" in r:
        out.append(f"fencing refused {r['stale_writes_rejected']} stale writes")
    if r["scenario"].startswith(("2_", "8_", "9_")):
        out.append(f"answers while it lasted: {answers}")
    if "applied_while_frozen" in r:
        out.append(f"{r['applied_while_frozen']} entries applied while frozen")
    if "applied_while_down" in r:
        out.append(f"{r['applied_while_down']} entries applied while it was down")
    if "move" in r:
        m = r["move"]
        out.append(
            f"{m['conversations_in_other_accounts']} conversations left behind,"
            f" {m['changes_after_move_in_new_account']} feed changes after the move all in"
            f" the new account ({m['changes_after_move_in_other_accounts']} elsewhere)"
        )
    if "purge" in r:
        p = r["purge"]
        left = sum(p["rows"].values())
        out.append(
            f"{p['redelivered_acked']} purged bodies redelivered (all 200), {left} rows of the"
            f" page came back, {p['fresh_states'].get('parked', 0)} of"
            f" {p['fresh_messages_sent']} later messages parked"
        )
    return "".join(f"; {x}" for x in out)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | fault | POSTs (retries) | items sent → events expected | lost | not applied"
        " (pending after run) | duplicated | ≠ in-order | 200 before commit | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["sender"]
        lines.append(
            f"| {r['title']} | {r['fault']}{_extra(r)} | {s['posts']} ({s['retries']})"
            f" | {r['deliveries']} items ({r['events_sent']} distinct) →"
            f" {r['events_distinct']} events"
            f" | {r['lost']} | {r['not_applied']} ({r['pending_after_run']})"
            f" | {r['duplicated']} | {r['state_mismatches']}"
            f" | {s['acked_not_committed']} | {'pass' if r['passed'] else 'FAIL'} |"
        )
    for r in results:
        if r["failures"]:
            lines.append(f"\n{r['scenario']} failed: " + "; ".join(r["failures"]))
            lines.append(f"  examples: {r['examples'] + r['acked_not_committed_examples']}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    keys = list(SCENARIOS)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        keys = [k for k in keys if k.split("_", 1)[0] in wanted]
    size = SHORT if args.short else FULL
    seed = args.seed or secrets.randbelow(10**6)
    results = []
    async with harness(tls=not args.insecure_grpc) as h:
        for key in keys:
            result = await run_scenario(h, key, size, seed)
            result["seed"] = seed
            results.append(result)
            print(
                f"chaos: {key}: {'pass' if result['passed'] else 'FAIL'} ({result['seconds']} s)",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the sizes `make test` uses")
    parser.add_argument("--only", help="scenario numbers, comma-separated (default: all nine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--insecure-grpc", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"chaos-{stamp}.json"
    summary = {
        "started_at": stamp,
        "short": args.short,
        "seed": results[0]["seed"] if results else args.seed,
        "passed": all(r["passed"] for r in results),
        "scenarios": results,
    }
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\nresults: {path}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
