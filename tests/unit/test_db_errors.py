"""Database errors: which ones mean "unavailable", and what a log line may show of them."""

from __future__ import annotations

import json
import logging
import sqlite3

import psycopg
import psycopg.errors as pg
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pagewire.kit.db import unavailable, unavailable_reason
from pagewire.kit.logs import JsonFormatter, database_error_summary, format_exception

MARKER = "PWPLANT-7f3a91c2"


def wrapped(error: Exception, driver_base: type[Exception] = psycopg.Error) -> DBAPIError:
    """`error` as SQLAlchemy raises it from a statement (its class picked from the driver's)."""
    try:
        raise error
    except Exception as orig:
        wrapper = DBAPIError.instance(
            "INSERT INTO messages (text) VALUES (%(text)s)",
            {"text": MARKER},
            orig,
            driver_base,
            hide_parameters=True,
        )
        try:
            raise wrapper from orig
        except DBAPIError as raised:
            return raised


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (pg.DiskFull(f"could not extend file: {MARKER}"), "disk_full, SQLSTATE 53100"),
        (pg.ReadOnlySqlTransaction("read-only"), "read_only_sql_transaction, SQLSTATE 25006"),
        (pg.OutOfMemory("oom"), "out_of_memory, SQLSTATE 53200"),
        (pg.TooManyConnections("too many"), "too_many_connections, SQLSTATE 53300"),
        (pg.InsufficientResources("low"), "insufficient_resources, SQLSTATE 53000"),
        (pg.AdminShutdown("terminating"), "admin_shutdown, SQLSTATE 57P01"),
        (pg.CrashShutdown("crash"), "crash_shutdown, SQLSTATE 57P02"),
        (pg.CannotConnectNow("starting up"), "cannot_connect_now, SQLSTATE 57P03"),
        (pg.ConnectionFailure("lost"), "connection_exception, SQLSTATE 08006"),
        (pg.ConnectionDoesNotExist("gone"), "connection_exception, SQLSTATE 08003"),
        # A connection refused has no SQLSTATE: the class says enough.
        (psycopg.OperationalError("connection refused"), "OperationalError"),
        (pg.SerializationFailure("retry"), "SerializationFailure, SQLSTATE 40001"),
    ],
)
def test_postgres_conditions_that_mean_unavailable(error: Exception, reason: str) -> None:
    assert unavailable_reason(wrapped(error)) == reason
    assert str(unavailable(wrapped(error))) == f"database unavailable ({reason})"


def test_a_driver_error_not_wrapped_by_sqlalchemy_is_classified_by_its_sqlstate() -> None:
    assert unavailable_reason(pg.DiskFull(MARKER)) == "disk_full, SQLSTATE 53100"
    assert unavailable_reason(pg.UniqueViolation(MARKER)) is None


def test_read_only_is_an_internal_error_in_sqlalchemy_yet_unavailable() -> None:
    error = wrapped(pg.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"))
    assert type(error).__name__ == "InternalError"
    assert unavailable_reason(error) == "read_only_sql_transaction, SQLSTATE 25006"


@pytest.mark.parametrize(
    "error",
    [
        pg.UniqueViolation(f"Key (mid)=({MARKER}) already exists."),
        pg.CheckViolation(f"Failing row contains ({MARKER})."),
        pg.InvalidTextRepresentation(f'invalid input syntax for type integer: "{MARKER}"'),
        pg.UndefinedTable("relation does not exist"),
    ],
)
def test_bugs_and_bad_data_are_not_unavailable(error: Exception) -> None:
    assert unavailable_reason(wrapped(error)) is None


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("database is locked", "database is locked"),
        ("attempt to write a readonly database", "readonly database"),
        ("disk I/O error", "disk I/O error"),
        ("database or disk is full", "database or disk is full"),
    ],
)
def test_sqlite_conditions_that_mean_unavailable(message: str, reason: str) -> None:
    error = wrapped(sqlite3.OperationalError(message), sqlite3.Error)
    assert unavailable_reason(error) == reason


def test_sqlite_result_code_names_are_read_too() -> None:
    error = sqlite3.OperationalError("something the message does not say")
    error.sqlite_errorname = "SQLITE_IOERR_SHORT_READ"  # type: ignore[attr-defined]
    assert unavailable_reason(error) == "disk I/O error"


def test_what_db_unavailable_covers_is_unavailable() -> None:
    assert unavailable_reason(PoolTimeout("QueuePool limit reached")) == "TimeoutError"
    assert unavailable_reason(ConnectionRefusedError()) == "ConnectionRefusedError"
    assert unavailable_reason(ValueError(MARKER)) is None
    assert unavailable_reason(wrapped(sqlite3.IntegrityError("UNIQUE"), sqlite3.Error)) is None


def test_a_database_error_is_logged_without_its_message() -> None:
    error = wrapped(pg.CheckViolation(f"violates check constraint\nDETAIL: Failing row ({MARKER})"))
    summary = database_error_summary(error)
    assert summary is not None
    assert "psycopg.errors.CheckViolation" in summary and "SQLSTATE 23514" in summary
    text = format_exception(error)
    assert MARKER not in text
    # Both links of the chain, with their frames, as Python prints them.
    assert text.startswith("Traceback (most recent call last):")
    assert "The above exception was the direct cause of the following exception:" in text
    assert "psycopg.errors.CheckViolation: SQLSTATE 23514" in text
    assert "sqlalchemy.exc.IntegrityError: (psycopg.errors.CheckViolation) SQLSTATE 23514" in text
    assert "in wrapped" in text


def test_other_errors_keep_their_message() -> None:
    try:
        try:
            raise KeyError("the-key")
        except KeyError:
            raise RuntimeError("while handling") from None
    except RuntimeError as exc:
        text = format_exception(exc)
    assert text.splitlines()[-1] == "RuntimeError: while handling"
    assert "the-key" not in text  # `from None` hides the context, as Python does


def _record(message: str, *args: object, exc: BaseException | None = None, **extra: object):  # type: ignore[no-untyped-def]
    record = logging.LogRecord("pagewire.test", logging.ERROR, __file__, 1, message, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.__dict__.update(extra)
    return record


def test_the_json_formatter_withholds_values_everywhere_a_record_carries_them() -> None:
    error = wrapped(pg.UniqueViolation(f"Key (mid)=({MARKER}) already exists."))
    line = JsonFormatter("router").format(_record("failed: %s", error, exc=error, cause=error))
    assert MARKER not in line
    payload = json.loads(line)
    assert payload["msg"].startswith("failed: sqlalchemy.exc.IntegrityError: (psycopg.errors")
    assert "SQLSTATE 23505" in payload["cause"]
    assert "Traceback (most recent call last):" in payload["error"]


def test_the_json_formatter_keeps_ordinary_tracebacks() -> None:
    try:
        raise ValueError("plain value")
    except ValueError as exc:
        line = JsonFormatter("router").format(_record("boom", exc=exc))
    error = json.loads(line)["error"]
    assert error.startswith("Traceback (most recent call last):")
    assert error.endswith("ValueError: plain value")
