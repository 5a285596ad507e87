"""`python -m bench.router_variant`: the router with another lock waiting strategy (ablation).

`PAGEWIRE_BENCH_LOCK_WAIT` (`wake`, `poll:100`, `retry:1000`) is read here and
nowhere else; the router's own composition root runs unchanged, with its
`RedisLocks` swapped for the bench subclass before `main()` builds the locks.
"""

from __future__ import annotations

import logging
import os

import services.router.__main__ as router_main
from bench.locks import lock_class
from pagewire.kit.runner import run

VARIABLE = "PAGEWIRE_BENCH_LOCK_WAIT"


def main() -> None:
    strategy = os.environ.get(VARIABLE, "wake")
    chosen = lock_class(strategy)
    router_main.RedisLocks = chosen  # type: ignore[misc]
    logging.getLogger("pagewire.bench").warning(
        "bench router variant", extra={"lock_wait": strategy, "lock_class": chosen.__name__}
    )
    run(router_main.main, "router")


if __name__ == "__main__":
    main()
