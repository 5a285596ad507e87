"""Prometheus metrics: the exposition every service serves, and the gRPC services' metrics port.

Each service declares its own metrics next to the code that moves them
(services/<name>/metrics.py, pagewire/graph/metrics.py); all of them live in
prometheus_client's default registry, so `exposition()` shows whatever this
process imported. The gateway serves it on `/metrics`; the gRPC services on
`PAGEWIRE_METRICS_PORT` (unset or 0: no metrics endpoint), bound to the gRPC
host. Labels carry kinds, outcomes, platforms and service names — never a
page id, a person's id, a token or a message's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

from pagewire.kit.settings import PREFIX, SettingsError, env_int

log = logging.getLogger("pagewire.metrics")

# No `<name>_created` series beside every counter and histogram: Prometheus needs none.
disable_created_metrics()

Closer = Callable[[], Awaitable[None]]

# Seconds: from a millisecond (a cached page lookup) to the gateway's whole budget.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def metrics_port(environ: Mapping[str, str]) -> int | None:
    """`PAGEWIRE_METRICS_PORT`: where a gRPC service serves /metrics; unset or 0: nowhere."""
    return env_int(environ, "METRICS_PORT", 0, minimum=0, maximum=65535) or None


def exposition() -> tuple[bytes, str]:
    """This process's metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


async def serve_metrics(host: str, port: int) -> Closer:
    """Serves /metrics on `host:port` (a thread of prometheus_client); returns its closer."""
    try:
        server, thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise SettingsError(
            f"{PREFIX}METRICS_PORT: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    log.info("metrics", extra={"host": host, "port": server.server_port})

    async def close() -> None:
        # shutdown() waits for the serving thread's next poll (up to half a second).
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join(timeout=1)

    return close


def refreshing(refresh: Callable[[], Awaitable[None]], interval_s: float) -> Closer:
    """Runs `refresh` now and then every `interval_s` (gauges read from the database);
    a failure is logged at debug and retried next time. Returns the closer."""

    async def loop() -> None:
        while True:
            started = time.monotonic()
            try:
                await refresh()
            except Exception as exc:
                log.debug("metrics refresh failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    task = asyncio.create_task(loop(), name="metrics-refresh")

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return close
