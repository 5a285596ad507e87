"""The per-account change feed: StreamEvents' reader, and the wake-up of local streams.

Changes are written in the apply transaction (and the sender's) by the store
(services/router/store/feed.py), with cursors gap-free and in commit order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.router.store import feed
from services.router.store.models import Change

BATCH = 200


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

    def notify_all(self, account_ids: Iterable[str]) -> None:
        for account_id in account_ids:
            self.notify(account_id)

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
            rows = await feed.after(session, account_id, cursor, BATCH)
        for row in rows:
            yield row
            cursor = row.cursor
        if len(rows) < BATCH:
            await notifier.wait(account_id, poll_s)
