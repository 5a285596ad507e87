"""A database and a Redis key prefix of the run's own, created migrated and removed afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg
import redis

from pagewire.kit import migrate


def with_database(admin_url: str, database: str) -> str:
    """`admin_url` pointed at another database."""
    return urlsplit(admin_url)._replace(path="/" + database).geturl()


def sqlalchemy_url(url: str) -> str:
    """The psycopg 3 driver URL the services and migrations take."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def plain_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextlib.contextmanager
def database(
    admin_url: str, name: str, services: tuple[str, ...] = migrate.SERVICES_WITH_SCHEMA
) -> Iterator[str]:
    """Creates `name` and migrates the schemas of `services` (every service's by default);
    yields its postgresql:// URL; drops it afterwards."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    try:
        for service in services:
            migrate.upgrade(service, sqlalchemy_url(url))
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_prefix(url: str, prefix: str) -> Iterator[str]:
    """Yields `prefix`; deletes every key under it afterwards."""
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
        except redis.RedisError:
            pass  # a run that broke Redis on purpose leaves nothing worth cleaning
        finally:
            client.close()


def scalar(url: str, sql: str, *params: object) -> int:
    """One number from the database (a count)."""
    with psycopg.connect(plain_url(url), autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def stored_events(url: str) -> int:
    """Events committed by the router: one row per distinct event, whatever its kind."""
    return scalar(url, "SELECT count(*) FROM router.events")
