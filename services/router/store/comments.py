"""Statements on comment threads: the apply stage's reads and writes, one statement per table
per batch, and the one writer of comment rows (webhooks and the Page's own replies alike)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.router.planner import THREAD, CommentState, Key, Plan, ThreadState
from services.router.store import bulk

_THREAD_COLUMNS = (
    "id, account_id, platform, page_id, post_id, fence, media_product_type,"
    " last_activity_ms, comment_count"
)
_THREAD_KEY = (("platform", "TEXT"), ("page_id", "TEXT"), ("post_id", "TEXT"))
_COMMENT_KEY = (("platform", "TEXT"), ("page_id", "TEXT"), ("comment_id", "TEXT"))
_COMMENT_FIELDS = tuple(f.name for f in fields(CommentState) if f.name != "id")


def _thread(row: Any, created: bool = False) -> ThreadState:
    return ThreadState(
        id=row.id,
        account_id=row.account_id,
        platform=row.platform,
        page_id=row.page_id,
        post_id=row.post_id,
        fence=row.fence,
        media_product_type=row.media_product_type,
        last_activity_ms=row.last_activity_ms,
        comment_count=row.comment_count,
        created=created,
    )


def _post(key: Key) -> dict[str, str]:
    return {"platform": key[0], "page_id": key[1], "post_id": key[2].removeprefix(THREAD)}


async def lock_threads(session: AsyncSession, keys: Sequence[Key]) -> dict[Key, ThreadState]:
    """The stored threads of `keys` (platform, page, "~post"), row-locked until commit."""
    if not keys:
        return {}
    lock = " FOR UPDATE OF t" if session.bind.dialect.name == "postgresql" else ""
    columns = ", ".join("t." + c.strip() for c in _THREAD_COLUMNS.split(","))
    rows = await bulk.with_values(
        session,
        f"SELECT {columns} FROM comment_threads t JOIN {{values}} ON t.platform = v.platform"
        " AND t.page_id = v.page_id AND t.post_id = v.post_id" + lock,
        _THREAD_KEY,
        [_post(k) for k in keys],
    )
    return {(r.platform, r.page_id, THREAD + r.post_id): _thread(r) for r in rows}


async def create_threads(
    session: AsyncSession, keys: Mapping[Key, str], now: int
) -> dict[Key, ThreadState]:
    """Threads for `keys` (key → account); the ones created (not those created meanwhile)."""
    if not keys:
        return {}
    rows = [{**_post(k), "account_id": account} for k, account in keys.items()]
    created = await bulk.with_values(
        session,
        "INSERT INTO comment_threads (account_id, platform, page_id, post_id,"
        " media_product_type, created_at_ms, last_activity_ms, comment_count, fence)"
        " SELECT v.account_id, v.platform, v.page_id, v.post_id, '', :now, 0, 0, 0"
        " FROM {values} WHERE true ON CONFLICT (platform, page_id, post_id) DO NOTHING"
        " RETURNING " + _THREAD_COLUMNS,
        (*_THREAD_KEY, ("account_id", "TEXT")),
        rows,
        {"now": now},
    )
    return {(r.platform, r.page_id, THREAD + r.post_id): _thread(r, True) for r in created}


async def known_comments(
    session: AsyncSession, keys: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], CommentState]:
    """The stored comments of `keys` (platform, page, comment id)."""
    rows = [{"platform": p, "page_id": g, "comment_id": c} for p, g, c in keys]
    if not rows:
        return {}
    columns = ", ".join(f"t.{name}" for name in ("id", *_COMMENT_FIELDS))
    found = await bulk.with_values(
        session,
        f"SELECT {columns} FROM comments t JOIN {{values}} ON t.platform = v.platform"
        " AND t.page_id = v.page_id AND t.comment_id = v.comment_id",
        _COMMENT_KEY,
        rows,
    )
    out = {}
    for r in found:
        values = {name: getattr(r, name) for name in ("id", *_COMMENT_FIELDS)}
        for flag in ("hidden", "removed", "from_page", "mention", "seen_add"):
            values[flag] = bool(values[flag])
        out[(r.platform, r.page_id, r.comment_id)] = CommentState(**values)
    return out


async def write_comments(
    session: AsyncSession, comments: Sequence[CommentState]
) -> dict[tuple[str, str, str], int]:
    """Inserts or rewrites whole comment rows (the caller folded them under the thread's
    lock); their ids by (platform, page, comment id)."""
    if not comments:
        return {}
    rows = [c.row() for c in comments]
    columns = tuple(rows[0])
    updates = ", ".join(
        f"{c} = excluded.{c}"
        for c in columns
        if c not in ("platform", "page_id", "comment_id", "stored_at_ms")
    )
    template = (
        f"INSERT INTO comments ({', '.join(columns)}) SELECT {', '.join('v.' + c for c in columns)}"
        " FROM {values} WHERE true ON CONFLICT (platform, page_id, comment_id) DO UPDATE SET "
        + updates
        + " RETURNING platform, page_id, comment_id, id"
    )
    written = await bulk.with_values(session, template, bulk.typed("comments", columns), rows)
    return {(r[0], r[1], r[2]): r[3] for r in written}


_REACTION = (
    "INSERT INTO post_reactions (platform, page_id, post_id, comment_id, user_id, user_name,"
    " reaction_type, verb, timestamp_ms, event_id) SELECT v.platform, v.page_id, v.post_id,"
    " v.comment_id, v.user_id, v.user_name, v.reaction_type, v.verb, v.timestamp_ms, v.event_id"
    " FROM {values} WHERE true"
    " ON CONFLICT (platform, page_id, post_id, comment_id, user_id) DO UPDATE SET"
    " user_name = excluded.user_name, reaction_type = excluded.reaction_type,"
    " verb = excluded.verb, timestamp_ms = excluded.timestamp_ms, event_id = excluded.event_id"
    " WHERE post_reactions.timestamp_ms < excluded.timestamp_ms OR"
    " (post_reactions.timestamp_ms = excluded.timestamp_ms"
    " AND post_reactions.event_id < excluded.event_id)"
)
_BLANK_EDITS = (
    "UPDATE comment_edits SET text = '' FROM {values} WHERE comment_edits.platform = v.platform"
    " AND comment_edits.page_id = v.page_id AND comment_edits.comment_id = v.comment_id"
)
_THREAD_UPDATE = (
    "UPDATE comment_threads SET account_id = v.account_id, fence = v.fence,"
    " media_product_type = v.media_product_type, last_activity_ms = v.last_activity_ms,"
    " comment_count = v.comment_count FROM {values} WHERE comment_threads.id = v.id"
)
_THREAD_UPDATE_COLUMNS = (
    ("id", "BIGINT"),
    ("account_id", "TEXT"),
    ("fence", "BIGINT"),
    ("media_product_type", "TEXT"),
    ("last_activity_ms", "BIGINT"),
    ("comment_count", "BIGINT"),
)


async def write_plan(
    session: AsyncSession, plan: Plan, fence: int
) -> dict[tuple[str, str, str], int]:
    """Writes the plan's threads, comments, edits and reactions; the comments' ids."""
    ids = await write_comments(session, list(plan.comments.values()))
    await bulk.insert_ignoring(session, "comment_edits", plan.new_comment_edits)
    if plan.blanked_comment_edits:
        rows = [
            {"platform": p, "page_id": g, "comment_id": c} for p, g, c in plan.blanked_comment_edits
        ]
        await bulk.with_values(session, _BLANK_EDITS, _COMMENT_KEY, rows)
    if plan.post_reactions:
        await bulk.with_values(
            session,
            _REACTION,
            bulk.typed(
                "post_reactions",
                (
                    "platform",
                    "page_id",
                    "post_id",
                    "comment_id",
                    "user_id",
                    "user_name",
                    "reaction_type",
                    "verb",
                    "timestamp_ms",
                    "event_id",
                ),
            ),
            list(plan.post_reactions.values()),
        )
    if plan.threads:
        rows = [
            {
                "id": t.id,
                "account_id": t.account_id,
                "fence": fence,
                "media_product_type": t.media_product_type,
                "last_activity_ms": t.last_activity_ms,
                "comment_count": t.comment_count,
            }
            for t in plan.threads.values()
        ]
        await bulk.with_values(session, _THREAD_UPDATE, _THREAD_UPDATE_COLUMNS, rows)
    return ids
