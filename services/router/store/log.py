"""Statements on the event log: the append, claims and leases, settling entries, status.

The append is one multi-row statement per group commit: an `INSERT … SELECT FROM
unnest(…)` on PostgreSQL (a multi-row VALUES list on SQLite) that drops, in the
same statement, duplicates (the unique event id) and events a purge's tombstone
covers. Claims take the oldest pending entries whose lease has passed, skipping
rows another replica is claiming at that instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store import bulk
from services.router.store.models import EventLog

PENDING, APPLIED, PARKED = "pending", "applied", "parked"
# An entry the database refused to apply (a value or a bug, not an outage): kept, listed.
FAILED = "failed"

# The columns an append writes, in this order (the rest have defaults).
APPEND_COLUMNS = (
    "platform",
    "page_id",
    "user_id",
    "event_id",
    "kind",
    "direction",
    "timestamp_ms",
    "standby",
    "raw_json",
    "event",
    "received_at_ms",
    "trace_parent",
)
_APPEND_TYPES = (
    ("platform", "TEXT"),
    ("page_id", "TEXT"),
    ("user_id", "TEXT"),
    ("event_id", "TEXT"),
    ("kind", "TEXT"),
    ("direction", "TEXT"),
    ("timestamp_ms", "BIGINT"),
    ("standby", "BOOLEAN"),
    ("raw_json", "TEXT"),
    ("event", "BYTEA"),
    ("received_at_ms", "BIGINT"),
    ("trace_parent", "TEXT"),
)
assert tuple(name for name, _ in _APPEND_TYPES) == APPEND_COLUMNS

_PG_APPEND = (
    "INSERT INTO events ("
    + ", ".join(APPEND_COLUMNS)
    + ", stored_at_ms, state, lease_until_ms, applied_at_ms) SELECT "
    + ", ".join(f"v.{c}" for c in APPEND_COLUMNS)
    + ", :now, 'pending', 0, 0 FROM {values}"
    " WHERE NOT EXISTS (SELECT 1 FROM purged_pages p WHERE p.platform = v.platform"
    " AND p.page_id = v.page_id AND v.timestamp_ms <= p.purged_at_ms)"
    # In key order: two commits appending the same redelivered ids in other orders would
    # otherwise wait on each other's uncommitted rows in a cycle (a deadlock, 40P01).
    " ORDER BY v.platform, v.page_id, v.event_id"
    " ON CONFLICT (platform, page_id, event_id) DO NOTHING"
    " RETURNING platform, page_id, event_id"
)


async def append(
    session: AsyncSession, rows: Sequence[dict[str, Any]], now: int
) -> set[tuple[str, str, str]]:
    """Appends `rows` (APPEND_COLUMNS each) as pending entries; returns the keys
    (platform, page id, event id) that were new — the rest were duplicates or purged."""
    if not rows:
        return set()
    if session.bind.dialect.name == "postgresql":
        new = await bulk.with_values(session, _PG_APPEND, _APPEND_TYPES, rows, {"now": now})
        return {tuple(r) for r in new}  # type: ignore[misc]
    purged = {
        (r.platform, r.page_id): r.purged_at_ms
        for r in await session.execute(
            text("SELECT platform, page_id, purged_at_ms FROM purged_pages")
        )
    }
    kept = [
        {**row, "stored_at_ms": now, "state": PENDING, "lease_until_ms": 0, "applied_at_ms": 0}
        for row in rows
        if row["timestamp_ms"] > purged.get((row["platform"], row["page_id"]), -1)
    ]
    inserted = await bulk.insert_ignoring(
        session, "events", kept, returning=("platform", "page_id", "event_id")
    )
    return {tuple(r) for r in inserted}  # type: ignore[misc]


@dataclass(frozen=True)
class Claimed:
    """A claimed entry: its row id, when it was appended, and its serialized event."""

    row_id: int
    platform: str
    page_id: str
    stored_at_ms: int
    event: bytes
    trace_parent: str = ""
    # Set when the entry is to be normalized again from its raw item before it is applied.
    renormalize: bool = False
    raw_json: str | None = None
    kind: str = ""
    event_id: str = ""
    timestamp_ms: int = 0
    received_at_ms: int = 0


_CLAIMED = (
    "id, platform, page_id, stored_at_ms, event, trace_parent, renormalize,"
    " CASE WHEN renormalize THEN raw_json END, kind, event_id, timestamp_ms, received_at_ms"
)
_PG_CLAIM = text(
    "UPDATE events SET lease_until_ms = :until WHERE id IN ("
    " SELECT id FROM events WHERE state = 'pending' AND lease_until_ms < :now"
    " ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED)"
    " RETURNING " + _CLAIMED
)
_SQLITE_CLAIM = text(
    "UPDATE events SET lease_until_ms = :until WHERE id IN ("
    " SELECT id FROM events WHERE state = 'pending' AND lease_until_ms < :now"
    " ORDER BY id LIMIT :n)"
    " RETURNING " + _CLAIMED
)


async def claim(session: AsyncSession, limit: int, now: int, lease_ms: int) -> list[Claimed]:
    """The oldest pending entries nobody holds, leased to the caller until now + lease."""
    statement = _PG_CLAIM if session.bind.dialect.name == "postgresql" else _SQLITE_CLAIM
    result = await session.execute(statement, {"until": now + lease_ms, "now": now, "n": limit})
    claimed = [
        Claimed(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], r[10], r[11])
        for r in result.all()
    ]
    claimed.sort(key=lambda c: c.row_id)
    return claimed


_SETTLE_COLUMNS = (
    ("id", "BIGINT"),
    ("state", "TEXT"),
    ("conversation_id", "BIGINT"),
    ("lease_until_ms", "BIGINT"),
)
_SETTLE = (
    "UPDATE events SET state = v.state, conversation_id = v.conversation_id,"
    " applied_at_ms = CASE WHEN v.state = 'applied' THEN :now ELSE 0 END,"
    " lease_until_ms = v.lease_until_ms FROM {values} WHERE events.id = v.id"
)


async def settle(
    session: AsyncSession, outcomes: Sequence[tuple[int, str, int | None, int]], now: int
) -> None:
    """Each entry's outcome in one statement: (row id, state, conversation id, lease until):
    applied (with its conversation), parked, or pending again — at once (lease 0) or after
    a short wait (its conversation was busy: the holder is still at it)."""
    rows = [
        {"id": i, "state": s, "conversation_id": c, "lease_until_ms": lease}
        for i, s, c, lease in outcomes
    ]
    await bulk.with_values(session, _SETTLE, _SETTLE_COLUMNS, rows, {"now": now})


_RENORMALIZED = (
    "UPDATE events SET event = v.event, kind = v.kind, user_id = v.user_id,"
    " direction = v.direction, renormalize = false FROM {values} WHERE events.id = v.id"
)
_RENORMALIZED_COLUMNS = (
    ("id", "BIGINT"),
    ("event", "BYTEA"),
    ("kind", "TEXT"),
    ("user_id", "TEXT"),
    ("direction", "TEXT"),
)


async def renormalized(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Stores the new normalized form of entries normalized again (id, event, kind, ...)."""
    if rows:
        await bulk.with_values(session, _RENORMALIZED, _RENORMALIZED_COLUMNS, rows)


async def mark_reprocess(
    session: AsyncSession, *, platform: str, page_id: str, kinds: Sequence[str], since_ms: int
) -> int:
    """Marks kept entries to be normalized again and applied; how many."""
    where = ["state IN ('applied', 'failed', 'parked')"]
    params: dict[str, Any] = {}
    if platform:
        where.append("platform = :platform")
        params["platform"] = platform
    if page_id:
        where.append("page_id = :page")
        params["page"] = page_id
    if since_ms:
        where.append("timestamp_ms >= :since")
        params["since"] = since_ms
    if kinds:
        names = {f"k{i}": k for i, k in enumerate(kinds)}
        where.append("kind IN (" + ", ".join(f":{n}" for n in names) + ")")
        params.update(names)
    result = await session.execute(
        text(
            "UPDATE events SET renormalize = true, lease_until_ms = 0,"
            " state = CASE WHEN state = 'parked' THEN 'parked' ELSE 'pending' END"
            " WHERE " + " AND ".join(where)
        ),
        params,
    )
    return result.rowcount or 0


async def drop(session: AsyncSession, row_ids: Sequence[int]) -> None:
    """Deletes entries a purge covers that were appended while it ran (its tombstone was
    not committed yet when their append checked it)."""
    if row_ids:
        await session.execute(delete(EventLog).where(EventLog.id.in_(list(row_ids))))


async def release(session: AsyncSession, row_ids: Sequence[int]) -> None:
    """Gives entries back to the next claim at once (a batch that could not run)."""
    if row_ids:
        await settle(session, [(i, PENDING, None, 0) for i in row_ids], 0)


async def unpark(session: AsyncSession, platform: str, page_id: str) -> int:
    """The page's parked entries become pending again; how many."""
    result = await session.execute(
        text(
            "UPDATE events SET state = 'pending', lease_until_ms = 0"
            " WHERE state = 'parked' AND platform = :platform AND page_id = :page"
        ),
        {"platform": platform, "page": page_id},
    )
    return result.rowcount or 0


async def parked_pages(session: AsyncSession, limit: int) -> list[tuple[str, str]]:
    """Pages with parked entries (the sweep asks whether they are connected now)."""
    result = await session.execute(
        text(
            "SELECT DISTINCT platform, page_id FROM events WHERE state = 'parked'"
            " ORDER BY platform, page_id LIMIT :n"
        ),
        {"n": limit},
    )
    return [(r[0], r[1]) for r in result.all()]


@dataclass(frozen=True)
class LogStatus:
    """How far behind the apply stage is."""

    pending: int
    leased: int
    parked: int
    failed: int
    oldest_pending_ms: int = 0  # when the oldest pending entry was appended; 0 when none
    renormalizing: int = 0  # pending entries to be normalized again first


async def status(session: AsyncSession, now: int) -> LogStatus:
    row = (
        await session.execute(
            text(
                "SELECT count(*), count(CASE WHEN lease_until_ms >= :now THEN 1 END),"
                " min(stored_at_ms) FROM events WHERE state = 'pending'"
            ),
            {"now": now},
        )
    ).one()
    counts = dict(
        (
            await session.execute(
                text(
                    "SELECT state, count(*) FROM events WHERE state IN ('parked', 'failed')"
                    " GROUP BY state"
                )
            )
        ).all()
    )
    renormalizing = (
        await session.execute(
            text("SELECT count(*) FROM events WHERE state = 'pending' AND renormalize")
        )
    ).scalar_one()
    return LogStatus(
        int(row[0]),
        int(row[1] or 0),
        int(counts.get(PARKED, 0)),
        int(counts.get(FAILED, 0)),
        int(row[2] or 0),
        int(renormalizing),
    )
