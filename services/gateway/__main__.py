"""Composition root of the gateway: settings → logging, tracing → app → uvicorn, until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from pagewire.kit import telemetry
from pagewire.kit.logs import setup_logging
from pagewire.kit.runner import run
from pagewire.kit.settings import current_environ
from pagewire.kit.tls import GrpcSecurity
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.protocol import with_header_timeout

log = logging.getLogger("pagewire.gateway")

# In-flight webhooks get this long to finish on SIGTERM; each is bounded by the
# ingest deadline, so a pod stops well inside Kubernetes' termination grace.
GRACEFUL_SHUTDOWN_S = 10


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGTERM/SIGINT like every other Pagewire service.

    uvicorn re-raises the signal after its graceful shutdown, so the process would
    die by SIGTERM instead of exiting 0 once drained; loop handlers avoid that.
    Tests that run the server inside their own process leave signals alone.
    """

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool = True) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.handle_signals:
            yield
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C skips the drain
        else:
            log.info("gateway stopping", extra={"signal": signal.Signals(sig).name})
            self.should_exit = True


def build_server(
    settings: GatewaySettings, app: ASGIApp, *, handle_signals: bool = True
) -> uvicorn.Server:
    """The uvicorn server production runs, and the one the tests run in-process."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # httptools, as "auto" would pick, plus the request-header deadline uvicorn lacks.
        http=with_header_timeout(settings.header_timeout_s),
        # Our JSON logging is already set up; uvicorn's own config would replace it.
        log_config=None,
        # An access line per webhook would be noise at 1,000 events/s, and the verify
        # handshake's query string carries the verify token.
        access_log=False,
        lifespan="on",
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return _Server(config, handle_signals=handle_signals)


async def main() -> None:
    """Reads the settings (failing fast on a missing secret) and serves until signalled."""
    settings = GatewaySettings.from_env(current_environ())
    security = GrpcSecurity.from_env(current_environ(), "gateway")
    setup_logging("gateway", settings.log_level)
    tracing = telemetry.setup("gateway", current_environ())
    security.announce(log)
    server = build_server(settings, create_app(settings, security=security))
    log.info(
        "gateway starting",
        extra={
            "host": settings.host,
            "port": settings.port,
            "router": settings.router_addr,
            "max_body_bytes": settings.max_body_bytes,
            "ingest_timeout_s": settings.ingest_timeout_s,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "max_concurrency": settings.max_concurrency,
            "max_items": settings.max_items,
        },
    )
    # Returns after SIGTERM/SIGINT, once open requests are answered.
    try:
        await server.serve()
    finally:
        await tracing.shutdown()
    log.info("gateway stopped")


if __name__ == "__main__":
    run(main, "gateway")
