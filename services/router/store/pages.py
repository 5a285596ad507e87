"""Statements on the router's own page table and the purge tombstones."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store import bulk

_PAGE_COLUMNS = (("platform", "TEXT"), ("page_id", "TEXT"))


async def accounts(
    session: AsyncSession, pages: Iterable[tuple[str, str]], *, share: bool = False
) -> dict[tuple[str, str], str]:
    """The account of each of `pages` the router has a row for ('': not connected).

    With `share` (inside an apply transaction) the rows are share-locked until commit: a
    move or a purge of one of these pages waits for the batch, and a batch that starts
    after it reads the new account (or no page).
    """
    rows = [{"platform": p, "page_id": g} for p, g in pages]
    if not rows:
        return {}
    lock = " FOR SHARE OF t" if share and session.bind.dialect.name == "postgresql" else ""
    found = await bulk.with_values(
        session,
        "SELECT t.platform, t.page_id, t.account_id FROM pages t JOIN {values}"
        " ON t.platform = v.platform AND t.page_id = v.page_id" + lock,
        _PAGE_COLUMNS,
        rows,
    )
    return {(r[0], r[1]): r[2] for r in found}


@dataclass(frozen=True)
class Notice:
    """What recording a page's account did."""

    taken: bool  # False: the router already had a newer notice, nothing changed
    before: str | None  # the account it had ('' not connected, None no row)


async def set_account(
    session: AsyncSession, platform: str, page_id: str, account_id: str, version: int, now: int
) -> Notice:
    """Records the page's account ('' : not connected) unless a newer notice is already
    recorded; version 0 is always taken and keeps the recorded version."""
    row = (
        await session.execute(
            text(
                "SELECT account_id, version FROM pages WHERE platform = :platform"
                " AND page_id = :page"
                + (" FOR UPDATE" if session.bind.dialect.name == "postgresql" else "")
            ),
            {"platform": platform, "page": page_id},
        )
    ).first()
    before, recorded = (row[0], row[1]) if row is not None else (None, 0)
    if version and version < recorded:
        return Notice(False, before)
    await session.execute(
        text(
            "INSERT INTO pages (platform, page_id, account_id, updated_at_ms, version)"
            " VALUES (:platform, :page, :account, :now, :version)"
            " ON CONFLICT (platform, page_id) DO UPDATE SET account_id = excluded.account_id,"
            " updated_at_ms = excluded.updated_at_ms, version = excluded.version"
        ),
        {
            "platform": platform,
            "page": page_id,
            "account": account_id,
            "now": now,
            "version": max(version, recorded),
        },
    )
    return Notice(True, before)


async def learn(
    session: AsyncSession, platform: str, page_id: str, account_id: str, now: int
) -> None:
    """Keeps what subscriptions said of a page the router did not know (no overwrite)."""
    await session.execute(
        text(
            "INSERT INTO pages (platform, page_id, account_id, updated_at_ms)"
            " VALUES (:platform, :page, :account, :now) ON CONFLICT (platform, page_id) DO NOTHING"
        ),
        {"platform": platform, "page": page_id, "account": account_id, "now": now},
    )


async def rehome(session: AsyncSession, platform: str, page_id: str, account_id: str) -> int:
    """Moves every conversation (and comment thread) of the page to `account_id`, one
    statement each; how many conversations moved."""
    params = {"platform": platform, "page": page_id, "account": account_id}
    result = await session.execute(
        text(
            "UPDATE conversations SET account_id = :account"
            " WHERE platform = :platform AND page_id = :page AND account_id <> :account"
        ),
        params,
    )
    await session.execute(
        text(
            "UPDATE comment_threads SET account_id = :account"
            " WHERE platform = :platform AND page_id = :page AND account_id <> :account"
        ),
        params,
    )
    return result.rowcount or 0


async def tombstones(
    session: AsyncSession, pages: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The purge tombstone (newest Meta time dropped) of each of `pages` that has one."""
    rows = [{"platform": p, "page_id": g} for p, g in pages]
    if not rows:
        return {}
    found = await bulk.with_values(
        session,
        "SELECT t.platform, t.page_id, t.purged_at_ms FROM purged_pages t JOIN {values}"
        " ON t.platform = v.platform AND t.page_id = v.page_id",
        _PAGE_COLUMNS,
        rows,
    )
    return {(r[0], r[1]): r[2] for r in found}


async def tombstone(session: AsyncSession, platform: str, page_id: str, up_to_ms: int) -> None:
    """From now on the append drops the page's events stamped up to `up_to_ms`."""
    await session.execute(
        text(
            "INSERT INTO purged_pages (platform, page_id, purged_at_ms)"
            " VALUES (:platform, :page, :t)"
            " ON CONFLICT (platform, page_id) DO UPDATE SET purged_at_ms ="
            " CASE WHEN purged_pages.purged_at_ms > excluded.purged_at_ms"
            " THEN purged_pages.purged_at_ms ELSE excluded.purged_at_ms END"
        ),
        {"platform": platform, "page": page_id, "t": up_to_ms},
    )
