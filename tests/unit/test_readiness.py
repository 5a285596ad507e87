"""The router's dependency watcher: its service name follows the checks, `""` never does."""

from __future__ import annotations

import asyncio
import logging

import pytest
from grpc_health.v1 import health, health_pb2

from pagewire.kit.errors import Unavailable
from services.router.readiness import DependencyWatcher
from tests.support.waiting import wait_for

NAME = "pagewire.router.v1.RouterService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Switch:
    """A check of `name` that fails while `down` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.down:
            raise Unavailable(f"{self.name} unavailable (TimeoutError)")


async def status(servicer: health.aio.HealthServicer, name: str) -> int:
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=name), None)
    return reply.status


async def serving_servicer() -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    for name in ("", NAME):
        await servicer.set(name, SERVING)
    return servicer


async def test_status_follows_the_checks_and_logs_each_transition_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pagewire.router.readiness")
    servicer = await serving_servicer()
    postgresql, redis = Switch("database"), Switch("redis")
    watcher = DependencyWatcher(
        servicer, NAME, {"postgresql": postgresql, "redis": redis}, interval_s=1
    )
    assert await watcher.check_once() == {}
    assert await status(servicer, NAME) == SERVING
    redis.down = True
    for _ in range(3):
        assert await watcher.check_once() == {"redis": "redis unavailable (TimeoutError)"}
    assert await status(servicer, NAME) == NOT_SERVING
    assert await status(servicer, "") == SERVING  # liveness never follows PostgreSQL or Redis
    postgresql.down = True
    await watcher.check_once()
    redis.down = postgresql.down = False
    await watcher.check_once()
    await watcher.check_once()
    assert await status(servicer, NAME) == SERVING
    lines = [(r.levelname, r.getMessage(), getattr(r, "failing", None)) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            "not ready: a dependency does not answer",
            {"redis": "redis unavailable (TimeoutError)"},
        ),
        (
            "WARNING",
            "not ready: a dependency does not answer",
            {
                "postgresql": "database unavailable (TimeoutError)",
                "redis": "redis unavailable (TimeoutError)",
            },
        ),
        ("INFO", "ready again: every dependency answers", None),
    ]


async def test_a_check_that_does_not_answer_fails_after_the_timeout() -> None:
    servicer = await serving_servicer()
    never = asyncio.Event()

    async def frozen() -> None:
        await never.wait()

    watcher = DependencyWatcher(servicer, NAME, {"redis": frozen}, interval_s=1, timeout_s=0.05)
    assert await watcher.check_once() == {"redis": "no answer within 0.05 s"}
    assert await status(servicer, NAME) == NOT_SERVING


async def test_the_loop_runs_until_stopped_and_stop_releases_what_it_holds() -> None:
    servicer = await serving_servicer()
    check = Switch("database")
    check.down = True
    released = asyncio.Event()

    async def release() -> None:
        released.set()

    watcher = DependencyWatcher(
        servicer, NAME, {"postgresql": check}, interval_s=60, on_stop=release
    )
    watcher.start()

    async def not_serving() -> bool:
        return await status(servicer, NAME) == NOT_SERVING

    # The first check runs at once, not after an interval (60 s here).
    await wait_for(not_serving, timeout=5, what="the first check to publish NOT_SERVING")
    await watcher.stop()
    assert released.is_set() and check.calls == 1
