"""JSON logs to stdout, one object per line, shared by every service and the CLI.

A line logged inside a span carries its `trace_id` and `span_id`, so a log line
leads to its trace and a trace to its log lines.

A database error is never printed with its driver's message: PostgreSQL quotes
row values in it (`DETAIL: Failing row contains (…)`, `Key (mid)=(…) already
exists`, `invalid input syntax …: "…"`), so a logged one shows its class, SQLSTATE
and the schema, table, column and constraint it names, and its stack frames.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from types import TracebackType

from opentelemetry import trace

# Attributes every LogRecord has; anything else passed via `extra=` is emitted as a field.
# uvicorn adds `color_message` (the same text with ANSI colours) to its records.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


# (module, class) of errors whose text may quote values; checked only once the module is
# loaded (a process that never imported a driver cannot hold its errors), so the gateway
# does not import SQLAlchemy to log.
_DATABASE_ERRORS = (
    ("sqlalchemy.exc", "StatementError"),
    ("psycopg", "Error"),
    ("sqlite3", "Error"),
)
_DIAG_NAMES = ("schema_name", "table_name", "column_name", "datatype_name", "constraint_name")
_WITHHELD = "(driver message withheld: it can quote values)"
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _is_database_error(exc: BaseException) -> bool:
    for module_name, class_name in _DATABASE_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def _qualified(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _driver_details(error: BaseException) -> list[str]:
    """SQLSTATE and object names of a driver error; never its message."""
    details = []
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str) and state:
        details.append(f"SQLSTATE {state}")
    name = getattr(error, "sqlite_errorname", None)
    if isinstance(name, str) and name:
        details.append(name)
    diag = getattr(error, "diag", None)
    for attribute in _DIAG_NAMES if diag is not None else ():
        try:
            value = getattr(diag, attribute)
        except Exception:  # a diag without its result (a constructed error) names nothing
            value = None
        if value:
            details.append(f"{attribute.removesuffix('_name')} {value}")
    return details


def database_error_summary(exc: BaseException) -> str | None:
    """What may be logged of a database error (None: `exc` is not one).

    For SQLAlchemy's wrapper, the driver's error class and its details; the SQL and its
    parameters are left out with the message."""
    if not _is_database_error(exc):
        return None
    orig = getattr(exc, "orig", None)
    driver = orig if isinstance(orig, BaseException) else exc
    parts = [f"({_qualified(type(driver))})"] if driver is not exc else []
    details = _driver_details(driver)
    if details:
        parts.append(", ".join(details))
    parts.append(_WITHHELD)
    return " ".join(parts)


def _exception_only(exc: BaseException) -> list[str]:
    summary = database_error_summary(exc)
    if summary is None:
        return traceback.format_exception_only(exc)
    return [f"{_qualified(type(exc))}: {summary}\n"]


def _chain(exc: BaseException, seen: set[int]) -> list[str]:
    """traceback.format_exception's lines for `exc` and what it was raised from."""
    seen.add(id(exc))
    lines: list[str] = []
    cause, context = exc.__cause__, None if exc.__suppress_context__ else exc.__context__
    if cause is not None and id(cause) not in seen:
        lines += [*_chain(cause, seen), _CAUSE]
    elif context is not None and id(context) not in seen:
        lines += [*_chain(context, seen), _CONTEXT]
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_tb(exc.__traceback__)
    lines += _exception_only(exc)
    if isinstance(exc, BaseExceptionGroup):
        for number, inner in enumerate(exc.exceptions, 1):
            lines.append(f"+---------------- {number} ----------------\n")
            lines += ["    " + line for line in "".join(_chain(inner, seen)).splitlines(True)]
    return lines


def format_exception(exc: BaseException) -> str:
    """The traceback of `exc` (and of its causes) as Python prints it, except that a
    database error shows only its class, SQLSTATE and object names."""
    return "".join(_chain(exc, set())).rstrip("\n")


def _loggable(value: object) -> object:
    if isinstance(value, BaseException):
        summary = database_error_summary(value)
        if summary is not None:
            return f"{_qualified(type(value))}: {summary}"
    return value


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; `extra=` fields become keys."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": self._message(record),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            payload["trace_id"] = trace.format_trace_id(span.trace_id)
            payload["span_id"] = trace.format_span_id(span.span_id)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = _loggable(value)
        if record.exc_info:
            payload["error"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        """The message, with a database error passed as an argument reduced to its summary."""
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, BaseException) for a in args):
            record = logging.makeLogRecord({**vars(record), "args": tuple(map(_loggable, args))})
        return record.getMessage()

    def formatException(  # noqa: N802 - logging.Formatter's name
        self,
        ei: tuple[type[BaseException], BaseException, TracebackType | None]
        | tuple[None, None, None],
    ) -> str:
        exc = ei[1]
        if exc is None:
            return super().formatException(ei)
        return format_exception(exc)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Routes every logger to stdout as JSON; quiets chatty libraries."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access lines would make a healthy system at 1,000 ev/s noisy.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
