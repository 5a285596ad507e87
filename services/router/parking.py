"""Which account a page's events go to; parked events; a page connected, moved or purged.

The router keeps the account of every page in its own table, written when
subscriptions says a page was connected or moved (`RouteParked`, which carries
the account) or disconnected (`PageDisconnected`), and by a purge; it is read in
every apply transaction, so a move, a disconnect or a purge reaches every replica
before its next apply. Subscriptions numbers its notices per page and retries
them until delivered; an older one than the router recorded changes nothing. A
page the table lacks (connected before this table existed) is asked of
subscriptions once and remembered. A page that is not connected has its events
parked in the log; they are applied when `RouteParked` says it is connected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.contract import Platform
from pagewire.kit.errors import InvalidArgument, Unavailable
from pagewire.kit.timeutil import now_ms
from services.router import metrics
from services.router.pages import PageDirectory
from services.router.store import log as store_log
from services.router.store import pages as store_pages
from services.router.store import purge as store_purge

log = logging.getLogger("pagewire.router.parking")

PageKey = tuple[str, str]  # platform name, page id
SWEEP_PAGES = 200


@dataclass(frozen=True)
class Routed:
    """What RouteParked did."""

    unparked: int
    moved_conversations: int


class Pages:
    """Page → account for the apply stage, and the page lifecycle the router takes part in."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        directory: PageDirectory,
        *,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._directory = directory
        self._wake = wake
        self._clock = clock

    async def resolve(
        self, pages: Iterable[PageKey]
    ) -> tuple[dict[PageKey, str | None], set[PageKey]]:
        """Each page's account (None: not connected), and the pages nobody could answer for
        now (subscriptions unreachable and the page unknown here): their entries wait."""
        wanted = set(pages)
        async with self._sessions() as session:
            rows = await store_pages.accounts(session, wanted)
        known: dict[PageKey, str | None] = {page: account or None for page, account in rows.items()}
        unresolved: set[PageKey] = set()
        # Only a page with no row at all (connected before the router kept one) is asked of
        # subscriptions; a disconnected or purged page has its row, so a directory answer
        # cached before that cannot bring it back.
        for platform, page_id in wanted - set(rows):
            try:
                info = await self._directory.page(Platform(platform).proto, page_id)
            except Unavailable:
                unresolved.add((platform, page_id))
                continue
            known[(platform, page_id)] = info.account_id if info else None
            if info is not None:
                async with self._sessions() as session, session.begin():
                    await store_pages.learn(
                        session, platform, page_id, info.account_id, self._clock()
                    )
        return known, unresolved

    async def route_parked(
        self, platform: Platform, page_id: str, account_id: str, version: int = 0
    ) -> Routed:
        """The page is connected to `account_id` (or moved there): remember it, move its
        conversations, and give its parked events to the apply stage. A notice older than
        the one recorded (`version`) changes nothing."""
        if not account_id:
            raise InvalidArgument("account_id", "is required: the account the page now belongs to")
        if version < 0:
            raise InvalidArgument("version", "must not be negative")
        async with self._sessions() as session, session.begin():
            await _page_lock(session, platform.value, page_id)
            notice = await store_pages.set_account(
                session, platform.value, page_id, account_id, version, self._clock()
            )
            if not notice.taken:
                log.info(
                    "older page notice ignored",
                    extra={"platform": platform.value, "page_id": page_id, "version": version},
                )
                return Routed(0, 0)
            moved = 0
            if notice.before != account_id:
                # Also after a disconnect: a conversation has one account, the page's.
                moved = await store_pages.rehome(session, platform.value, page_id, account_id)
            unparked = await store_log.unpark(session, platform.value, page_id)
        self._directory.remember(platform.proto, page_id, account_id)
        if unparked:
            metrics.PARKED_ROUTED.labels(platform.label).inc(unparked)
            self._wake()
        if moved or unparked:
            log.info(
                "page connected",
                extra={
                    "platform": platform.value,
                    "page_id": page_id,
                    "unparked": unparked,
                    "moved_conversations": moved,
                },
            )
        return Routed(unparked, moved)

    async def disconnected(self, platform: Platform, page_id: str, version: int = 0) -> bool:
        """The page is not connected any more: its events are parked from the next batch on
        (every replica reads the row in its apply transaction). False: an older notice."""
        if version < 0:
            raise InvalidArgument("version", "must not be negative")
        async with self._sessions() as session, session.begin():
            await _page_lock(session, platform.value, page_id)
            notice = await store_pages.set_account(
                session, platform.value, page_id, "", version, self._clock()
            )
        self._directory.forget(platform.proto, page_id)
        log.info(
            "page disconnected" if notice.taken else "older page notice ignored",
            extra={"platform": platform.value, "page_id": page_id, "version": version},
        )
        return notice.taken

    async def purge(self, platform: Platform, page_id: str) -> dict[str, int]:
        """Deletes everything stored for the page and keeps a tombstone, so the same
        bodies delivered again store nothing."""
        async with self._sessions() as session, session.begin():
            await _page_lock(session, platform.value, page_id)
            counts = await store_purge.purge_page(session, platform.value, page_id, self._clock())
        self._directory.forget(platform.proto, page_id)
        log.info("purged page", extra={"platform": platform.value, "page_id": page_id, **counts})
        return counts

    async def reprocess(
        self, *, platform: int, page_id: str, kinds: list[str], since_ms: int
    ) -> int:
        """Marks kept items to be normalized again with the current code and applied
        (idempotently: what they already produced is not produced twice)."""
        name = ""
        if platform:
            try:
                name = Platform.from_proto(platform).value
            except ValueError:
                raise InvalidArgument(
                    "platform", "must be FACEBOOK, INSTAGRAM or unspecified"
                ) from None
        if page_id and (not page_id.isdigit() or len(page_id) > 128):
            raise InvalidArgument("page_id", "must be a page id (digits)")
        if len(kinds) > 100 or any(not k or len(k) > 64 for k in kinds):
            raise InvalidArgument("kinds", "at most 100 kinds of 1-64 characters")
        if since_ms < 0:
            raise InvalidArgument("since_ms", "must not be negative")
        async with self._sessions() as session, session.begin():
            marked = await store_log.mark_reprocess(
                session, platform=name, page_id=page_id, kinds=kinds, since_ms=since_ms
            )
        if marked:
            self._wake()
        log.info("events marked for reprocessing", extra={"marked": marked, "kinds": kinds})
        return marked

    async def sweep(self) -> int:
        """Unparks the pages with parked events that are connected by now; how many events.

        Only pages the router has no row for are asked of subscriptions (fresh): a page
        with a row learns of its connect from RouteParked, which subscriptions retries
        until it is delivered."""
        async with self._sessions() as session:
            parked = await store_log.parked_pages(session, SWEEP_PAGES)
        total = 0
        for platform, page_id in parked:
            async with self._sessions() as session:
                rows = await store_pages.accounts(session, [(platform, page_id)])
            account = rows.get((platform, page_id))
            if account == "":
                continue
            if account is None:
                try:
                    info = await self._directory.page(Platform(platform).proto, page_id, fresh=True)
                except Unavailable:
                    continue
                if info is None:
                    continue
                account = info.account_id
            total += (await self.route_parked(Platform(platform), page_id, account)).unparked
        return total

    async def sweep_forever(self, period_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), period_s)
                return
            except TimeoutError:
                pass  # the period elapsed
            try:
                await self.sweep()
            except Exception as exc:  # a database or subscriptions outage: next period
                log.warning("parked sweep failed", extra={"error": type(exc).__name__})


async def _page_lock(session: AsyncSession, platform: str, page_id: str) -> None:
    """Orders a page's connect, move and purge against the apply batches that park its
    events (PostgreSQL; SQLite has one writer at a time anyway)."""
    if session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"pagewire:page:{platform}:{page_id}"},
        )


async def park_lock(session: AsyncSession, pages: Iterable[PageKey]) -> None:
    """The apply's side of `_page_lock`, shared, for the pages it is about to park."""
    if session.bind.dialect.name != "postgresql":
        return
    for platform, page_id in sorted(pages):
        await session.execute(
            text("SELECT pg_advisory_xact_lock_shared(hashtext(:key))"),
            {"key": f"pagewire:page:{platform}:{page_id}"},
        )
