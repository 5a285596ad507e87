"""The per-account change feed: written in each group's transaction, read by StreamEvents.

Cursors come from one counter row per account, bumped as the transaction's last
statement: its row lock is held only until commit, so cursors are handed out
in commit order, without gaps, and a consumer that resumes after cursor N can
never miss a change committed later with a smaller number.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.router.store import Change

BATCH = 200
# Text, not SQLAlchemy's ON CONFLICT construct, which 2.0 recompiles on every call; the
# same SQL runs on PostgreSQL and SQLite.
_BUMP = text(
    "INSERT INTO account_cursors (account_id, last_cursor) VALUES (:account, :n)"
    " ON CONFLICT (account_id) DO UPDATE SET last_cursor = account_cursors.last_cursor + :n"
    " RETURNING last_cursor"
)


async def record(
    session: AsyncSession,
    account_id: str,
    changes: Sequence[tuple[str, int | None, int | None, int | None]],
    now: int,
) -> None:
    """Appends `changes` to the account's feed; call last in the transaction."""
    if not changes:
        return
    last = (await session.execute(_BUMP, {"account": account_id, "n": len(changes)})).scalar_one()
    first = last - len(changes) + 1
    await session.execute(
        Change.__table__.insert(),
        [
            {
                "account_id": account_id,
                "cursor": first + i,
                "kind": kind,
                "conversation_id": conversation_id,
                "message_id": message_id,
                "event_row_id": event_row_id,
                "committed_at_ms": now,
            }
            for i, (kind, conversation_id, message_id, event_row_id) in enumerate(changes)
        ],
    )


class FeedNotifier:
    """Wakes this replica's streams when it commits a change for their account.

    Other replicas' commits are found by the streams' short periodic re-read.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, account_id: str) -> None:
        event = self._events.get(account_id)
        if event is not None:
            event.set()

    async def wait(self, account_id: str, timeout: float) -> None:
        event = self._events.setdefault(account_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return
        finally:
            event.clear()


async def changes_after(
    sessions: async_sessionmaker[AsyncSession],
    account_id: str,
    after: int,
    notifier: FeedNotifier,
    *,
    poll_s: float = 0.5,
) -> AsyncIterator[Change]:
    """Every change of the account after `after`, in cursor order, then new ones forever."""
    cursor = after
    while True:
        async with sessions() as session:
            rows = (
                (
                    await session.execute(
                        select(Change)
                        .where(Change.account_id == account_id, Change.cursor > cursor)
                        .order_by(Change.cursor)
                        .limit(BATCH)
                    )
                )
                .scalars()
                .all()
            )
        for row in rows:
            yield row
            cursor = row.cursor
        if len(rows) < BATCH:
            await notifier.wait(account_id, poll_s)
