"""`python -m tests.chaos [--short] [--only 1,3]`: every scenario, a table, and a JSON file.

Exits non-zero when any scenario lost, doubled or diverged, or answered 200
for an event that was not committed.
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


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | fault | POSTs (retries) | items sent → events expected | lost | duplicated"
        " | ≠ in-order | 200 before commit | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["sender"]
        extra = (
            f"; fencing refused {r['stale_writes_rejected']} stale writes"
            if "stale_writes_rejected" in r
            else ""
        )
        lines.append(
            f"| {r['title']} | {r['fault']}{extra} | {s['posts']} ({s['retries']})"
            f" | {r['deliveries']} items ({r['events_sent']} distinct) →"
            f" {r['events_distinct']} events"
            f" | {r['lost']} | {r['duplicated']} | {r['state_mismatches']}"
            f" | {s['acked_not_committed']} | {'pass' if r['passed'] else 'FAIL'} |"
        )
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
    parser.add_argument("--only", help="scenario numbers, comma-separated (default: all five)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--insecure-grpc", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"chaos-{stamp}.json"
    path.write_text(json.dumps({"started_at": stamp, "scenarios": results}, indent=2) + "\n")
    print(table(results))
    print(f"\nresults: {path}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
