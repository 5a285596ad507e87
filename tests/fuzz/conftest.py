"""One running suite for the whole fuzz module: started once, hit by every generated case."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from bench.db import sqlalchemy_url, with_database
from bench.procs import Suite
from pagewire import fakegraph
from services.tokens.vault import generate_keyring
from tests.conftest import ADMIN_PG, RUN_ID, TEST_REDIS

# Connected, so well-formed events are stored; events for other page ids are parked.
CONNECTED_PAGE = "109384756201938"


@pytest.fixture(scope="module")
async def fuzz_suite(
    pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Suite]:
    """Tokens, subscriptions, router and gateway on a fresh copy of the migrated database."""
    name = f"pagewire_test_{RUN_ID}_fuzz{secrets.token_hex(2)}"
    with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    graph = await fakegraph.start()
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    suite = Suite.create(
        workdir,
        database_url=sqlalchemy_url(with_database(ADMIN_PG, name)),
        redis_url=TEST_REDIS,
        redis_prefix=f"pwtest{RUN_ID}fuzz{secrets.token_hex(2)}",
        graph_url=graph.url,
        keyring=generate_keyring(),
    )
    try:
        for service in ("tokens", "subscriptions", "router", "gateway"):
            await suite.start(service)
        token = workdir / "page.token"
        token.write_text("EAAGfuzzPageToken000000000000000000001\n")
        await suite.cli(
            "pages",
            "connect",
            "--platform",
            "facebook",
            "--page-id",
            CONNECTED_PAGE,
            "--account",
            "acme",
            "--token-file",
            str(token),
        )
        yield suite
    finally:
        await suite.stop_all()
        await graph.stop()
        with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
