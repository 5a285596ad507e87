"""Telling the router of a page's connect, move and disconnect, until it has been told.

The notice is written in the transaction that changes the connection (store.note_for_router),
sent at once, and, when the router cannot be reached or refuses, sent again by a loop with
a growing delay. Each notice carries the page's version, so a retry that arrives after a
newer notice changes nothing in the router; what the router ends up with is always the
connection's latest state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.kit.db import DB_UNAVAILABLE
from pagewire.kit.errors import PagewireError
from pagewire.kit.timeutil import now_ms
from services.subscriptions import metrics, store
from services.subscriptions.ports import Router
from services.subscriptions.store import Notice

log = logging.getLogger("pagewire.subscriptions.notices")

BATCH = 100
FIRST_RETRY_MS = 1_000
LAST_RETRY_MS = 300_000


def retry_delay_ms(attempts: int) -> int:
    """1 s after the first failure, doubling, at most 5 minutes."""
    return min(LAST_RETRY_MS, FIRST_RETRY_MS * 2 ** max(0, min(attempts - 1, 20)))


class Notices:
    """Delivers router notices now and retries the ones that failed."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        router: Router,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._router = router
        self._clock = clock

    async def deliver(self, notice: Notice) -> int | None:
        """Sends `notice`; the parked events the router now applies, None if it failed
        (it is retried by the loop)."""
        try:
            if notice.account_id:
                routed = await self._router.route_parked(
                    notice.platform, notice.page_id, notice.account_id, notice.version
                )
            else:
                await self._router.page_disconnected(
                    notice.platform, notice.page_id, notice.version
                )
                routed = 0
        except PagewireError as exc:
            await self._failed(notice, str(exc))
            return None
        try:
            async with self._sessions() as session, session.begin():
                await store.notice_delivered(session, notice)
        except DB_UNAVAILABLE as exc:
            # The router has it; sending it again later is harmless (same version).
            log.warning(
                "router notice delivered but not recorded",
                extra={
                    "platform": notice.platform,
                    "page_id": notice.page_id,
                    "error": type(exc).__name__,
                },
            )
        metrics.ROUTER_NOTICES.labels("delivered").inc()
        return routed

    async def _failed(self, notice: Notice, error: str) -> None:
        metrics.ROUTER_NOTICES.labels("failed").inc()
        attempts = 0
        try:
            async with self._sessions() as session, session.begin():
                attempts = await store.notice_failed(
                    session, notice, self._clock(), retry_delay_ms, error
                )
        except DB_UNAVAILABLE:
            pass  # still due: the loop sends it again
        log.warning(
            "could not tell the router of the page (its parked events wait); retrying",
            extra={
                "platform": notice.platform,
                "page_id": notice.page_id,
                "disconnected": not notice.account_id,
                "attempts": attempts,
                "retry_in_s": retry_delay_ms(max(attempts, 1)) / 1000,
                "error": error,
            },
        )

    async def deliver_due(self) -> int:
        """Sends every notice that is due; how many the router took."""
        async with self._sessions() as session:
            due = await store.due_notices(session, self._clock(), BATCH)
        taken = 0
        for notice in due:
            if await self.deliver(notice) is not None:
                taken += 1
        return taken

    async def loop(self, stop: asyncio.Event, period_s: float) -> None:
        """Until `stop`: every `period_s`, the notices that are due."""
        while not stop.is_set():
            try:
                await self.deliver_due()
            except Exception as exc:  # a database outage: next period
                log.warning("router notices not sent", extra={"error": type(exc).__name__})
            try:
                await asyncio.wait_for(stop.wait(), period_s)
            except TimeoutError:
                pass  # the period elapsed
