"""Real PostgreSQL and Redis for every test run, each run in its own database and key space."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis.asyncio as aioredis

from pagewire.kit import migrate

# Fails the run when a page token shows up in any log line or logged exception.
pytest_plugins = ("tests.support.secretscan",)

ADMIN_PG = os.environ.get("PAGEWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_REDIS = os.environ.get("PAGEWIRE_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = secrets.token_hex(4)
REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("PAGEWIRE_FIXTURES", REPO.parent / "shared" / "fixtures"))

HOW_TO_START = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
}


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    for name, url, port in (("PostgreSQL", ADMIN_PG, 5432), ("Redis", TEST_REDIS, 6379)):
        if not _reachable(url, port):
            where = urlsplit(url)
            pytest.exit(
                f"{name} is not reachable at {where.hostname}:{where.port or port};"
                f" start it with: {HOW_TO_START[name]}",
                returncode=3,
            )


def _pg_url(database: str) -> str:
    parts = urlsplit(ADMIN_PG)
    return parts._replace(path="/" + database).geturl()


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated once per run; each test gets a fresh copy of it."""
    name = f"pagewire_test_{RUN_ID}_tpl"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        for service in migrate.SERVICES_WITH_SCHEMA:
            migrate.upgrade(
                service, _pg_url(name).replace("postgresql://", "postgresql+psycopg://")
            )
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    name = f"pagewire_test_{RUN_ID}_{secrets.token_hex(3)}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield _pg_url(name).replace("postgresql://", "postgresql+psycopg://")
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def other_database_url(pg_template: str) -> Iterator[str]:
    """A second fresh database for the same test (two runs that must not share rows)."""
    name = f"pagewire_test_{RUN_ID}_{secrets.token_hex(3)}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield _pg_url(name).replace("postgresql://", "postgresql+psycopg://")
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    return TEST_REDIS


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix no other run uses; its keys are deleted afterwards."""
    prefix = f"pwtest{RUN_ID}{secrets.token_hex(3)}"
    yield prefix
    client = aioredis.from_url(TEST_REDIS)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures: Meta webhook bodies with signatures, Graph shapes, peer bodies."""
    if not (FIXTURES / "meta" / "SIGNATURES.json").exists():
        pytest.exit(f"fixtures not found at {FIXTURES}; set PAGEWIRE_FIXTURES", returncode=3)
    return FIXTURES


COMMENT_FIXTURES = REPO / "tests" / "fixtures" / "comments"


@pytest.fixture(scope="session")
def comment_fixtures_dir() -> Path:
    """tests/fixtures/comments: comment, post reaction and mention webhook bodies."""
    return COMMENT_FIXTURES
