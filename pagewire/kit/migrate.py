"""Alembic, run from code: each service has its own migration history and schema.

`pagewire db upgrade`, `make run` (for the embedded default) and the
Kubernetes migration Job all call `upgrade`; services never migrate at start.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from pagewire.kit.db import create_sync_engine, is_postgres

SERVICES_WITH_SCHEMA = ("router", "tokens", "subscriptions")
_ROOT = Path(__file__).resolve().parents[2] / "services"


def _config(service: str, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_ROOT / service / "migrations"))
    config.attributes["url"] = url
    config.attributes["schema"] = service
    return config


def upgrade(service: str, url: str, revision: str = "head") -> None:
    """Brings `service`'s schema at `url` to `revision` (synchronous)."""
    if service not in SERVICES_WITH_SCHEMA:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES_WITH_SCHEMA)}")
    command.upgrade(_config(service, url), revision)


def current(service: str, url: str) -> str | None:
    """The revision `service`'s schema is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    engine = create_sync_engine(url, service)
    try:
        with engine.connect() as conn:
            opts = {"version_table_schema": service} if is_postgres(url) else {}
            return MigrationContext.configure(conn, opts=opts).get_current_revision()
    finally:
        engine.dispose()


def run_env(context, target_metadata) -> None:  # type: ignore[no-untyped-def]
    """Body of every service's migrations/env.py."""
    url: str = context.config.attributes["url"]
    schema: str = context.config.attributes["schema"]
    engine = create_sync_engine(url, schema)
    try:
        if is_postgres(url):
            with engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        with engine.connect() as conn:
            opts = {"version_table_schema": schema} if is_postgres(url) else {}
            context.configure(connection=conn, target_metadata=target_metadata, **opts)
            with context.begin_transaction():
                context.run_migrations()
            conn.commit()
    finally:
        engine.dispose()
