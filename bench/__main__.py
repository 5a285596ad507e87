"""`python -m bench [--quick] [--profile SECONDS]`: run the benchmark, write JSON, print a table."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from bench.report import table
from bench.run import FULL, QUICK, run

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run, well under a minute")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also record py-spy profiles of the gateway and routers under load",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where <timestamp>.json goes")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "PAGEWIRE_BENCH_POSTGRES",
            os.environ.get(
                "PAGEWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
            ),
        ),
        help="admin URL of the PostgreSQL to use (a database of the run's own is created)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get(
            "PAGEWIRE_BENCH_REDIS",
            os.environ.get("PAGEWIRE_TEST_REDIS", "redis://127.0.0.1:6379/0"),
        ),
        help="Redis URL (keys under a prefix of the run's own, deleted afterwards)",
    )
    parser.add_argument(
        "--insecure-grpc",
        action="store_true",
        help="plaintext gRPC between the services (PAGEWIRE_INSECURE_GRPC=1) instead of mTLS",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(
        run(
            QUICK if args.quick else FULL,
            admin_url=args.postgres,
            redis_url=args.redis,
            out_dir=args.out,
            tls=not args.insecure_grpc,
            profile_s=args.profile,
        )
    )
    print(table(results))
    print(f"\nresults: {results['file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
