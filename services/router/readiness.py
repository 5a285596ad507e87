"""Readiness that means something: the router is SERVING only while it can append to its log.

The ACK path needs PostgreSQL (the log) and nothing else: Redis only serves the
apply stage's conversation locks, whose outage delays visibility but not the
200. Every interval the watcher runs `SELECT 1` on PostgreSQL, bounded by the
interval, and sets the health status of the router's service name to
NOT_SERVING while it fails, SERVING when it answers again. The gateway's
/readyz asks for that name, so it answers 503 while an Ingest could not commit.
The overall `""` status is left alone: liveness probes ask for it, and a
PostgreSQL outage must not restart every pod. One line is logged when the set of
failing dependencies changes, never on every tick.

PostgreSQL is checked over a one-connection engine of its own, so a pool busy
with a burst of Ingests does not read as a database that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from grpc_health.v1 import health, health_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pagewire.kit.db import create_engine, unavailable_reason
from pagewire.kit.errors import PagewireError
from pagewire.kit.settings import redacted_url
from services.router.config import RouterSettings

log = logging.getLogger("pagewire.router.readiness")

Check = Callable[[], Awaitable[object]]


def postgres_check(engine: AsyncEngine) -> Check:
    """`SELECT 1` on `engine`; raises when PostgreSQL (or SQLite) does not answer."""

    async def check() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return check


def _reason(exc: BaseException, timeout_s: float) -> str:
    """Why a check failed, safe to log: a condition or class name, never a driver message."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, PagewireError):
        return str(exc)  # written to be shown: "redis unavailable (TimeoutError)"
    return unavailable_reason(exc) or type(exc).__name__


class DependencyWatcher:
    """Sets `service`'s health status from `checks`, every `interval_s`, until stopped."""

    def __init__(
        self,
        health_servicer: health.aio.HealthServicer,
        service: str,
        checks: Mapping[str, Check],
        *,
        interval_s: float,
        timeout_s: float | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._health = health_servicer
        self._service = service
        self._checks = dict(checks)
        self._interval_s = interval_s
        self._timeout_s = timeout_s if timeout_s is not None else interval_s
        self._on_stop = on_stop
        # start_server has just set the service SERVING: only a change is published.
        self.failing: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run_check(self, name: str, check: Check) -> tuple[str, str | None]:
        try:
            async with asyncio.timeout(self._timeout_s):
                await check()
        except Exception as exc:
            return name, _reason(exc, self._timeout_s)
        return name, None

    async def check_once(self) -> dict[str, str]:
        """Runs every check once and publishes the outcome; returns what fails, and why."""
        results = await asyncio.gather(*(self._run_check(n, c) for n, c in self._checks.items()))
        failing = {name: reason for name, reason in results if reason is not None}
        if failing.keys() != self.failing.keys():
            await self._publish(failing)
        self.failing = failing
        return failing

    async def _publish(self, failing: dict[str, str]) -> None:
        serving = health_pb2.HealthCheckResponse
        if failing:
            await self._health.set(self._service, serving.NOT_SERVING)
            log.warning(
                "not ready: a dependency does not answer",
                extra={"service": self._service, "failing": failing},
            )
        else:
            await self._health.set(self._service, serving.SERVING)
            log.info(
                "ready again: every dependency answers",
                extra={"service": self._service, "checks": sorted(self._checks)},
            )

    async def _loop(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval_s)  # the check period, not a synchronisation

    def start(self) -> None:
        """Starts checking in the background; the first check runs at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="readiness")

    async def stop(self) -> None:
        """Stops checking (a closer of the server) and releases what the checks use."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._on_stop is not None:
            await self._on_stop()


def router_watcher(
    health_servicer: health.aio.HealthServicer,
    service: str,
    settings: RouterSettings,
) -> DependencyWatcher:
    """The router's watcher: PostgreSQL, which the append needs."""
    engine = create_engine(settings.database_url, "router", pool_size=1)
    checks: dict[str, Check] = {"postgresql": postgres_check(engine)}
    log.info(
        "readiness follows the router's dependencies",
        extra={
            "interval_s": settings.readiness_interval_s,
            "database": redacted_url(settings.database_url),
        },
    )
    return DependencyWatcher(
        health_servicer,
        service,
        checks,
        interval_s=settings.readiness_interval_s,
        on_stop=engine.dispose,
    )
