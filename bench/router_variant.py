"""`python -m bench.router_variant`: the router with another busy-retry delay or lock wait.

`PAGEWIRE_BENCH_BUSY_RETRY_MS` sets `services.router.apply.BUSY_RETRY_MS` — how
long a busy conversation's entries wait before another batch may claim them (the
router's own: 100) — and `PAGEWIRE_BENCH_LOCK_WAIT` (`wake`, `poll:100`,
`retry:1000`) swaps the `RedisLocks` whose `hold` SendMessage waits in for a
bench subclass (bench/locks.py). Both are read here and nowhere else; the
router's own composition root then runs unchanged.
"""

from __future__ import annotations

import logging
import os

import services.router.__main__ as router_main
import services.router.apply as router_apply
from bench.locks import lock_class
from pagewire.kit.runner import run

LOCK_WAIT = "PAGEWIRE_BENCH_LOCK_WAIT"
BUSY_RETRY_MS = "PAGEWIRE_BENCH_BUSY_RETRY_MS"


def main() -> None:
    strategy = os.environ.get(LOCK_WAIT, "wake")
    chosen = lock_class(strategy)
    router_main.RedisLocks = chosen  # type: ignore[misc]
    retry = os.environ.get(BUSY_RETRY_MS)
    if retry:
        # Read by Applier._apply at every batch, so setting it before main() suffices.
        router_apply.BUSY_RETRY_MS = int(retry)
    logging.getLogger("pagewire.bench").warning(
        "bench router variant",
        extra={
            "lock_wait": strategy,
            "lock_class": chosen.__name__,
            "busy_retry_ms": router_apply.BUSY_RETRY_MS,
        },
    )
    run(router_main.main, "router")


if __name__ == "__main__":
    main()
