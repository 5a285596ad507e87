"""Statements of the change feed: append a transaction's changes, read an account's feed.

Cursors come from one counter row per account, bumped as the transaction's last
statement: its row lock is held only until commit, so cursors are handed out in
commit order, without gaps, and a consumer that resumes after cursor N can never
miss a change committed later with a smaller number. A batch touching several
accounts bumps them in one statement, in account order (two transactions never
wait on each other's counters crosswise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store import bulk
from services.router.store.models import Change

# kind, conversation, message, event row, comment, thread
ChangeRow = tuple[str, int | None, int | None, int | None, int | None, int | None]

_BUMP = (
    "INSERT INTO account_cursors (account_id, last_cursor)"
    " SELECT v.account_id, v.n FROM {values} WHERE true ORDER BY v.account_id"
    " ON CONFLICT (account_id) DO UPDATE"
    " SET last_cursor = account_cursors.last_cursor + excluded.last_cursor"
    " RETURNING account_id, last_cursor"
)


async def record(
    session: AsyncSession, changes: Mapping[str, Sequence[ChangeRow]], now: int
) -> None:
    """Appends each account's changes to its feed; call last in the transaction."""
    wanted = {account: rows for account, rows in changes.items() if rows}
    if not wanted:
        return
    counts = [{"account_id": a, "n": len(wanted[a])} for a in sorted(wanted)]
    bumped = await bulk.with_values(
        session, _BUMP, (("account_id", "TEXT"), ("n", "BIGINT")), counts
    )
    rows = []
    for account, last in bumped:
        items = wanted[account]
        first = last - len(items) + 1
        rows += [
            {
                "account_id": account,
                "cursor": first + i,
                "kind": kind,
                "conversation_id": conversation_id,
                "message_id": message_id,
                "event_row_id": event_row_id,
                "committed_at_ms": now,
                "comment_row_id": comment_row_id,
                "thread_id": thread_id,
            }
            for i, (
                kind,
                conversation_id,
                message_id,
                event_row_id,
                comment_row_id,
                thread_id,
            ) in enumerate(items)
        ]
    await bulk.insert_ignoring(session, "changes", rows)


async def after(
    session: AsyncSession, account_id: str, cursor: int, limit: int
) -> Sequence[Change]:
    """The account's changes after `cursor`, in cursor order."""
    return (
        (
            await session.execute(
                select(Change)
                .where(Change.account_id == account_id, Change.cursor > cursor)
                .order_by(Change.cursor)
                .limit(limit)
            )
        )
        .scalars()
        .all()
    )
