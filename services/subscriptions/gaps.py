"""Gap repair: messages Meta has in a conversation but never delivered as a webhook.

Meta drops a delivery now and then (ad-originated Instagram messages, for one), and
nothing downstream notices because nothing compares. A pass reads, for every subscribed
page, the conversations active in the last days and their newest messages, and appends
them to the router's log as `ORIGIN_GAP_REPAIR` events: the log drops every one it
already has (by mid), so what it stores is exactly what was missing. Each filled gap is
counted (`pagewire_history_gaps_filled_total`) and logged with its conversation, so an
operator sees that Meta dropped something.

Left alone: messages newer than the grace period (their webhook may be on its way),
messages from before the page was connected (history import's, not a gap), and pages
whose history import is still pending or running (it will read them anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.contract import Platform
from pagewire.graph import ConversationsApi, GraphError
from pagewire.history import GAP_REPAIR, message_event, person_of
from pagewire.kit.errors import PagewireError
from pagewire.kit.timeutil import now_ms
from pagewire.normalize import graph_time_ms
from services.subscriptions import metrics, store
from services.subscriptions.history import DAY_MS, HistorySettings, Pacer
from services.subscriptions.ports import Router, Vault

log = logging.getLogger("pagewire.subscriptions.gaps")


@dataclass
class GapReport:
    """What one pass did."""

    pages: int = 0
    conversations_checked: int = 0
    gaps_filled: int = 0
    errors: list[str] = field(default_factory=list)


class GapRepair:
    """One pass over the subscribed pages, on demand (RepairGaps) or every period."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        vault: Vault,
        api: ConversationsApi,
        router: Router,
        pacer: Pacer,
        settings: HistorySettings,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._api = api
        self._router = router
        self._pacer = pacer
        self.settings = settings
        self._clock = clock

    async def run(self, platform: str = "", page_id: str = "") -> GapReport:
        """A pass over every subscribed page (or the one named)."""
        async with self._sessions() as session:
            pages = await store.list_pages(session, platform=platform, page_id=page_id)
            imports = await store.histories(session, [(p.platform, p.page_id) for p in pages])
        report = GapReport()
        for page in pages:
            running = imports.get((page.platform, page.page_id))
            if page.status != store.SUBSCRIBED or (
                running is not None and running.state in (store.PENDING, store.RUNNING)
            ):
                continue
            report.pages += 1
            try:
                await self._page(Platform(page.platform), page.page_id, page.created_at_ms, report)
            except (GraphError, PagewireError) as exc:
                summary = exc.summary if isinstance(exc, GraphError) else str(exc)
                report.errors.append(f"{page.platform.lower()} {page.page_id}: {summary}")
                log.warning(
                    "gap repair could not read the page",
                    extra={"platform": page.platform, "page_id": page.page_id, "error": summary},
                )
        return report

    async def _page(
        self, platform: Platform, page_id: str, connected_at_ms: int, report: GapReport
    ) -> None:
        settings = self.settings
        now = self._clock()
        active_since = now - int(settings.gap_days * DAY_MS)
        # Older than the connection is history (the import's); newer than the grace may
        # still come as a webhook. Graph's times have whole seconds: a message of the
        # connection's own second reads as earlier than the connection.
        connected_s = connected_at_ms - connected_at_ms % 1000
        oldest = max(active_since, connected_s)
        newest = now - int(settings.gap_grace_s * 1000)
        token, _status = await self._vault.decrypt(platform.value, page_id)
        after, checked = "", 0
        while checked < settings.gap_conversations:
            conversations, after = await self._pacer.call(
                platform.value,
                page_id,
                lambda after=after: self._api.conversations(
                    platform.value, page_id, token, after=after, limit=25
                ),
            )
            metrics.HISTORY_CALLS.labels(platform.label, "conversations", "ok").inc()
            for conversation in conversations:
                updated = graph_time_ms(conversation.updated_time) or 0
                if updated and updated < active_since:
                    return  # newest first: the rest were not active in the window
                if checked >= settings.gap_conversations:
                    return
                checked += 1
                report.conversations_checked += 1
                user_id, _name = person_of(conversation.participants, page_id)
                page = await self._pacer.call(
                    platform.value,
                    page_id,
                    lambda conversation_id=conversation.id: self._api.messages(
                        platform.value,
                        page_id,
                        conversation_id,
                        token,
                        limit=settings.gap_messages,
                    ),
                )
                metrics.HISTORY_CALLS.labels(platform.label, "messages", "ok").inc()
                received = self._clock()
                events = [
                    event
                    for event in (
                        message_event(
                            platform,
                            page_id,
                            item,
                            origin=GAP_REPAIR,
                            received_at_ms=received,
                            user_id=user_id,
                        )
                        for item in page.items
                    )
                    if event is not None and oldest <= event.timestamp_ms <= newest
                ]
                if not events:
                    continue
                stored, _duplicates = await self._router.ingest(events)
                if stored:
                    report.gaps_filled += stored
                    metrics.GAPS_FILLED.labels(platform.label).inc(stored)
                    log.warning(
                        "gap filled: Meta never delivered these messages as webhooks",
                        extra={
                            "platform": platform.value,
                            "page_id": page_id,
                            "conversation_id": conversation.id,
                            "user_id": user_id,
                            "filled": stored,
                        },
                    )
            if not after:
                return

    async def loop(self, stop: asyncio.Event) -> None:
        """Until `stop`: a pass every `gap_interval_s`, the first one period after start."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.gap_interval_s)
            if stop.is_set():
                return
            try:
                report = await self.run()
            except Exception as exc:  # a database outage: next period
                log.warning("gap repair pass failed", extra={"error": type(exc).__name__})
                continue
            log.info(
                "gap repair pass",
                extra={
                    "pages": report.pages,
                    "conversations": report.conversations_checked,
                    "filled": report.gaps_filled,
                    "errors": len(report.errors),
                },
            )
