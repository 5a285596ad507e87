"""The whole suite as real processes: gateway, router, tokens, subscriptions, and fake Graph."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest

from pagewire import fakegraph
from services.tokens.vault import generate_keyring
from tests.support.stack import APP_SECRET, REPO, Stack

# Page tokens used by the end-to-end tests; none may ever appear in any log line.
PAGE_TOKENS = {
    "109384756201938": "EAAGe2eTokenForAcmeShoes0000000000000000000001",
    "117465829304716": "EAAGe2eTokenForAcmeDiner0000000000000000000002",
    "17841405822304914": "IGAAe2eTokenForAcmeInstagram000000000000000003",
}
INSTAGRAM_PAGES = {"17841405822304914"}


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
async def graph() -> AsyncIterator[fakegraph.FakeGraph]:
    fake = await fakegraph.start()
    yield fake
    await fake.stop()


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    graph: fakegraph.FakeGraph,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> AsyncIterator[Stack]:
    """All four services on PostgreSQL and Redis, over mutual TLS with a certificate each
    (as `make run` starts them), with `env` for all and `overrides` per service; logs
    scanned for page tokens afterwards."""
    stack = Stack.create(
        tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        graph_url=graph.url,
        keyring=generate_keyring(),
        tls=True,
    )
    stack.env.update(env or {})
    try:
        for service in ("tokens", "subscriptions", "router", "gateway"):
            await stack.start(service, **(overrides or {}).get(service, {}))
        yield stack
    finally:
        await stack.stop_all()
    logs = stack.logs()
    leaked = [page for page, token in PAGE_TOKENS.items() if token in logs]
    assert not leaked, f"page tokens of {leaked} appeared in service logs"


@pytest.fixture
async def stack(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    graph: fakegraph.FakeGraph,
) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, database_url, redis_url, redis_prefix, graph) as stack:
        yield stack


async def cli(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs `pagewire …` as a user would, against this stack.

    In a thread, so the in-process fake Graph API keeps answering meanwhile.
    """
    env = {**os.environ, **stack.env, "PAGEWIRE_GATEWAY_URL": stack.gateway_url}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pagewire.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pagewire {' '.join(args)} failed: {result.stderr}")
    return result


async def connect(stack: Stack, page_id: str, account: str = "acme", *extra: str) -> dict:  # type: ignore[type-arg]
    """`pagewire pages connect` of one of PAGE_TOKENS' pages (`extra`: more options); the
    reply as JSON."""
    token_file = stack.workdir / f"{page_id}.token"
    token_file.write_text(PAGE_TOKENS[page_id] + "\n")
    platform = "instagram" if page_id in INSTAGRAM_PAGES else "facebook"
    result = await cli(
        stack,
        "pages",
        "connect",
        "--platform",
        platform,
        "--page-id",
        page_id,
        "--account",
        account,
        "--token-file",
        str(token_file),
        "--json",
        *extra,
    )
    return json.loads(result.stdout)


async def applied(database_url: str, timeout: float = 30.0) -> None:
    """Waits until the router's apply stage has caught up: no log entry pending."""
    from tests.support.waiting import wait_for

    def caught_up() -> bool:
        sql = "SELECT count(*) FROM router.events WHERE state = 'pending'"
        return query(database_url, sql)[0][0] == 0

    await wait_for(caught_up, timeout=timeout, what="the apply stage to catch up")


def query(database_url: str, sql: str, *params: object) -> list[tuple]:  # type: ignore[type-arg]
    """Reads what was stored, straight from PostgreSQL."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()
