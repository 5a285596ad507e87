"""A frozen Redis (SIGSTOP) under real router and gateway processes: the ACK does not need
Redis, so POSTs keep getting their 200 in time and /readyz stays 200; what they carry is
applied once Redis resumes, nothing lost and nothing twice."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from services.gateway.config import GatewaySettings
from tests.support.outages import log_lines, post, readyz, router_and_gateway, webhook
from tests.support.waiting import free_port, wait_for

INGEST_DEADLINE_S = GatewaySettings.ingest_timeout_s  # PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S default
USERS = ("7294015836620301", "7294015836620302", "7294015836620303")


class OwnRedis:
    """A redis-server of this test's own, with a password and nothing on disk."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.password = f"pw{secrets.token_hex(8)}"
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.log = root / "redis.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [
                    *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                    *("--requirepass", self.password, "--dir", str(root)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)  # a stopped process does not act on SIGKILL until resumed
        self.popen.kill()
        self.popen.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def stored_mids(database_url: str) -> list[str]:
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return [r[0] for r in conn.execute("SELECT mid FROM router.messages ORDER BY mid")]


async def test_a_frozen_redis_keeps_acks_flowing_and_applies_after(
    tmp_path: Path, database_url: str, redis_prefix: str, own_redis: OwnRedis
) -> None:
    await wait_for(own_redis.answers, timeout=10, what="the test's redis-server to answer")
    async with router_and_gateway(
        tmp_path / "suite",
        database_url=database_url,
        redis_url=own_redis.url,
        redis_prefix=redis_prefix,
    ) as stack:
        await wait_for(lambda: readyz(stack), timeout=10, what="/readyz to answer")
        assert await readyz(stack) == 200
        assert (
            await post(stack, webhook("m_before", "before", user_id=USERS[0]))
        ).status_code == 200
        await wait_for(lambda: stored_mids(database_url) == ["m_before"], what="m_before applied")

        own_redis.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = await post(stack, webhook("m_frozen", "frozen", user_id=USERS[1]))
            elapsed = time.monotonic() - started
            # Durable in the log, so acknowledged: the apply stage waits for Redis instead.
            assert frozen.status_code == 200
            assert elapsed < INGEST_DEADLINE_S, f"200 took {elapsed:.2f}s"
            print(f"frozen Redis: POST answered 200 in {elapsed:.3f}s")  # noqa: T201 - the figure
            assert await readyz(stack) == 200

            def waiting() -> list[dict[str, object]]:
                return [
                    line
                    for line in log_lines(stack.procs["router"])
                    if line["msg"] == "apply stage waiting for a dependency"
                ]

            # Frozen for longer than the Redis timeout: the apply stage notices, and waits.
            await wait_for(waiting, timeout=10, what="the apply stage to wait for Redis")
            assert {line["level"] for line in waiting()} == {"warning"}
            assert await readyz(stack) == 200
            assert stored_mids(database_url) == ["m_before"]
        finally:
            own_redis.signal(signal.SIGCONT)

        after = await post(stack, webhook("m_after", "after", user_id=USERS[2]))
        assert after.status_code == 200
        await wait_for(
            lambda: stored_mids(database_url) == ["m_after", "m_before", "m_frozen"],
            timeout=20,
            what="everything applied once Redis resumes",
        )
        router = log_lines(stack.procs["router"])

    assert own_redis.password not in stack.logs()
    transitions = [line for line in router if line["logger"] == "pagewire.router.readiness"]
    assert [line["msg"] for line in transitions[1:]] == []  # readiness never moved
    assert not [line for line in router if "error" in line]  # no traceback anywhere
