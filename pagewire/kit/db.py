"""Database engines: one async engine per process, a schema per service.

In PostgreSQL each service lives in its own schema (selected through the
connection's search_path, so models and migrations carry no schema name); with
the embedded default each service has its own SQLite file under var/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from pagewire.kit import telemetry
from pagewire.kit.errors import Unavailable

# Errors that mean "the database cannot be reached", as opposed to a bug or bad data.
DB_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout, OSError)

# PostgreSQL conditions that mean "cannot write now, try again later", whatever class
# psycopg files them under (read-only is an InternalError): by SQLSTATE, then by class.
_UNAVAILABLE_SQLSTATES = {
    "25006": "read_only_sql_transaction",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "53400": "configuration_limit_exceeded",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
}
_UNAVAILABLE_CLASSES = {"08": "connection_exception", "53": "insufficient_resources"}
# SQLite's equivalents, by result code name and by message (aiosqlite raises sqlite3's errors).
_SQLITE_UNAVAILABLE = {
    "SQLITE_BUSY": "database is locked",
    "SQLITE_LOCKED": "database is locked",
    "SQLITE_READONLY": "readonly database",
    "SQLITE_IOERR": "disk I/O error",
    "SQLITE_FULL": "database or disk is full",
    "SQLITE_CANTOPEN": "unable to open database file",
}


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def _connect_args(url: str, schema: str) -> dict[str, Any]:
    if is_postgres(url):
        return {"options": f"-csearch_path={schema}"}
    return {}


def _prepare_sqlite(url: str, engine: Engine) -> None:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the single writer; busy_timeout waits instead of failing.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def create_engine(url: str, schema: str, *, pool_size: int = 10) -> AsyncEngine:
    """The process's async engine for `schema`; nothing connects until first use.

    While tracing is on, each SQL statement it runs is a span."""
    # hide_parameters: an error's text never carries the statement's values (message
    # text, user ids, raw JSON); pagewire.kit.logs withholds the driver's own message.
    kwargs: dict[str, Any] = {"connect_args": _connect_args(url, schema), "hide_parameters": True}
    if is_postgres(url):
        kwargs.update(
            pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_timeout=5
        )
    engine = create_async_engine(url, **kwargs)
    if not is_postgres(url):
        _prepare_sqlite(url, engine.sync_engine)
    telemetry.instrument_engine(engine)
    return engine


def sync_url(url: str) -> str:
    """The same database for synchronous use (migrations)."""
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1)


def create_sync_engine(url: str, schema: str) -> Engine:
    """A synchronous engine, for Alembic."""
    from sqlalchemy import create_engine as create

    engine = create(sync_url(url), connect_args=_connect_args(url, schema), hide_parameters=True)
    if not is_postgres(url):
        _prepare_sqlite(url, engine)
    return engine


def sessions(engine: AsyncEngine) -> async_sessionmaker:
    """The process's session factory; one session per RPC."""
    return async_sessionmaker(engine, expire_on_commit=False)


def upsert_insert(engine_or_dialect_name: str):  # type: ignore[no-untyped-def]
    """The dialect's INSERT that supports ON CONFLICT (PostgreSQL and SQLite both do)."""
    return postgresql.insert if engine_or_dialect_name == "postgresql" else sqlite.insert


def _sqlite_reason(error: BaseException) -> str | None:
    name = getattr(error, "sqlite_errorname", None) or ""
    for code, reason in _SQLITE_UNAVAILABLE.items():
        if name == code or name.startswith(code + "_"):
            return reason
    text = str(error).lower()
    for reason in _SQLITE_UNAVAILABLE.values():
        if reason.lower() in text:
            return reason
    return None


def unavailable_reason(exc: BaseException) -> str | None:
    """Why `exc` means the database cannot take this work now (read-only, disk full,
    connection lost, shutting down, locked …), or None for a bug or bad data.

    The answer is safe to log and to return to a caller: a condition or class name
    and a SQLSTATE, never the driver's message (which can quote row values).
    """
    driver = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    state = getattr(driver, "sqlstate", None)
    if isinstance(state, str) and len(state) == 5:
        name = _UNAVAILABLE_SQLSTATES.get(state) or _UNAVAILABLE_CLASSES.get(state[:2])
        if name is not None:
            return f"{name}, SQLSTATE {state}"
    if type(driver).__module__ == "sqlite3":
        sqlite = _sqlite_reason(driver)
        if sqlite is not None:
            return sqlite
    if isinstance(exc, DB_UNAVAILABLE):
        if isinstance(state, str) and state:
            return f"{type(driver).__name__}, SQLSTATE {state}"
        return type(driver).__name__
    return None


def unavailable(exc: BaseException) -> Unavailable:
    """A safe error for a database that cannot be reached (no URL, no credentials)."""
    return Unavailable(f"database unavailable ({unavailable_reason(exc) or type(exc).__name__})")
