"""Set-based statements over a list of rows: one statement per table per batch.

A batch's rows travel as one relation joined to the table (`UPDATE … FROM`,
`SELECT … JOIN`, `INSERT … SELECT`). On PostgreSQL that relation is
`unnest(array, array, …)` — one array parameter per column, sent in psycopg's
binary format, so a statement's text is short and the same for any number of rows
(parsed and planned once, no placeholder per value to convert) and no value is
escaped as text. On SQLite, which has no arrays, it is a `VALUES` list, cached by
row count and cut into chunks under SQLite's parameter limit. Statements are
text: SQLAlchemy 2.0 recompiles its own ON CONFLICT and multi-row constructs on
every call, which cost the router a third of its CPU before.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Row, TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store.models import Base

# SQLite allows 32,766 parameters per statement, PostgreSQL 65,535.
MAX_PARAMETERS = 30_000

Columns = tuple[tuple[str, str], ...]  # (name, SQL type) of each VALUES column


def chunks(rows: Sequence[Any], width: int) -> list[Sequence[Any]]:
    size = max(1, MAX_PARAMETERS // max(1, width))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


@functools.lru_cache(maxsize=1024)
def _values(columns: Columns, count: int) -> str:
    """`(SELECT column1 AS a, … FROM (VALUES (…), …)) AS v`: rows with named columns.

    Every value is cast, so PostgreSQL knows the type of each column and SQLite gives
    it the same affinity."""
    rows = ", ".join(
        "(" + ", ".join(f"CAST(:{name}_{i} AS {kind})" for name, kind in columns) + ")"
        for i in range(count)
    )
    names = ", ".join(f"column{n + 1} AS {name}" for n, (name, _) in enumerate(columns))
    return f"(SELECT {names} FROM (VALUES {rows}) AS rows_) AS v"


@functools.lru_cache(maxsize=1024)
def _statement(template: str, columns: Columns, count: int) -> TextClause:
    return text(template.replace("{values}", _values(columns, count)))


def _params(columns: Columns, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {f"{name}_{i}": row[name] for i, row in enumerate(rows) for name, _ in columns}


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@functools.lru_cache(maxsize=1024)
def _pg_statement(template: str, columns: Columns) -> str:
    """The PostgreSQL form: `{values}` as `unnest` of binary arrays, `:name` as psycopg's
    `%(name)s` (the statement goes to the driver as is)."""
    arrays = ", ".join(f"CAST(%(_{name})b AS {kind}[])" for name, kind in columns)
    names = ", ".join(name for name, _ in columns)
    sql = _NAMED.sub(r"%(\1)s", template.replace("%", "%%"))
    return sql.replace("{values}", f"unnest({arrays}) AS v({names})")


async def _pg(
    session: AsyncSession,
    template: str,
    columns: Columns,
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None,
) -> list[Row[Any]]:
    params = {f"_{name}": [row[name] for row in rows] for name, _ in columns}
    params.update(extra or {})
    connection = await session.connection()
    result = await connection.exec_driver_sql(_pg_statement(template, columns), params)
    return list(result.all()) if result.returns_rows else []


async def with_values(
    session: AsyncSession,
    template: str,
    columns: Columns,
    rows: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> list[Row[Any]]:
    """Runs `template` with `{values}` replaced by the rows; the rows it returns.

    `extra` holds the statement's own parameters (`:name` in the template).
    """
    if not rows:
        return []
    if session.bind.dialect.name == "postgresql":
        return await _pg(session, template, columns, rows, extra)
    out: list[Row[Any]] = []
    for part in chunks(rows, len(columns)):
        statement = _statement(template, columns, len(part))
        result = await session.execute(statement, {**_params(columns, part), **(extra or {})})
        if result.returns_rows:
            out.extend(result.all())
    return out


@functools.lru_cache(maxsize=1024)
def _insert(
    table: str, columns: tuple[str, ...], count: int, returning: tuple[str, ...]
) -> TextClause:
    values = ", ".join(
        "(" + ", ".join(f":{column}_{i}" for column in columns) + ")" for i in range(count)
    )
    quoted = ", ".join(f'"{column}"' for column in columns)
    sql = f'INSERT INTO "{table}" ({quoted}) VALUES {values} ON CONFLICT DO NOTHING'
    if returning:
        sql += " RETURNING " + ", ".join(f'"{c}"' for c in returning)
    return text(sql)


async def insert_ignoring(
    session: AsyncSession,
    table: str,
    rows: Sequence[Mapping[str, Any]],
    returning: tuple[str, ...] = (),
) -> list[Row[Any]]:
    """INSERT … ON CONFLICT DO NOTHING [RETURNING …] of rows keyed by column name: what
    the unique constraints let in (a duplicate is not an error, it is nothing)."""
    if not rows:
        return []
    columns = tuple(rows[0])
    if session.bind.dialect.name == "postgresql":
        columns_typed = typed(table, columns)
        quoted = ", ".join(f'"{c}"' for c in columns)
        template = (
            f'INSERT INTO "{table}" ({quoted}) SELECT {", ".join("v." + c for c in columns)}'
            " FROM {values} ON CONFLICT DO NOTHING"
        )
        if returning:
            template += " RETURNING " + ", ".join(f'"{c}"' for c in returning)
        return await _pg(session, template, columns_typed, rows, None)
    out: list[Row[Any]] = []
    for part in chunks(rows, len(columns)):
        params = {f"{c}_{i}": row[c] for i, row in enumerate(part) for c in columns}
        result = await session.execute(_insert(table, columns, len(part), returning), params)
        if returning:
            out.extend(result.all())
    return out


_PG_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "BOOLEAN": "boolean",
    "TEXT": "text",
    "VARCHAR": "text",
    "BYTEA": "bytea",
    "BLOB": "bytea",
}


@functools.lru_cache(maxsize=256)
def typed(table: str, columns: tuple[str, ...]) -> Columns:
    """(column, PostgreSQL type) from the router's models, for `unnest`'s arrays."""
    described = Base.metadata.tables[table].columns
    from sqlalchemy.dialects import postgresql

    dialect = postgresql.dialect()
    out = []
    for column in columns:
        compiled = described[column].type.compile(dialect=dialect).split("(")[0].upper()
        out.append((column, _PG_TYPES.get(compiled, compiled.lower())))
    return tuple(out)
