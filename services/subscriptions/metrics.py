"""The subscriptions service's metrics: pages by status, reconcile checks and repairs,
router notices, history imports and gap repair."""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions import store

PLATFORMS = ("FACEBOOK", "INSTAGRAM")
STATUSES = (store.SUBSCRIBED, store.SUBSCRIBE_FAILED, store.REAUTH_REQUIRED)
CHECK_OUTCOMES = ("OK", "REPAIRED", "REAUTH_REQUIRED", "FAILED", "SKIPPED")

PAGES = Gauge(
    "pagewire_pages",
    "Connected pages by platform and subscription status, read from the database every 30 s.",
    ["platform", "status"],
)
RECONCILE_CHECKS = Counter(
    "pagewire_reconcile_checks",
    "Pages checked by reconcile (the loop and the Reconcile RPC), by outcome.",
    ["outcome"],
)
RECONCILE_REPAIRS = Counter(
    "pagewire_reconcile_repairs",
    "Subscriptions Meta had dropped or narrowed, subscribed again by reconcile.",
    ["platform"],
)
ROUTER_NOTICES = Counter(
    "pagewire_router_notices",
    "Page connect, move and disconnect notices sent to the router, by outcome (a failed one"
    " is sent again).",
    ["outcome"],
)
ROUTER_NOTICES_PENDING = Gauge(
    "pagewire_router_notices_pending",
    "Pages whose latest connect, move or disconnect the router has not taken yet, read"
    " every 30 s; above 0 for long means the router keeps refusing or cannot be reached.",
)

HISTORY_CALLS = Counter(
    "pagewire_history_calls",
    "Conversations API calls made by history import and gap repair, by edge"
    " (conversations, messages) and result (ok, or Graph's error code).",
    ["platform", "edge", "result"],
)
HISTORY_MESSAGES = Counter(
    "pagewire_history_messages",
    "Messages history import read from Graph: stored (new to the router's log) or"
    " duplicate (a webhook, or an earlier import, had stored them).",
    ["platform", "result"],
)
HISTORY_ERRORS = Counter(
    "pagewire_history_errors",
    "Graph errors met by history import, by code (rate limits are waited out, others fail"
    " the import).",
    ["platform", "code"],
)
HISTORY_IMPORTS = Counter(
    "pagewire_history_imports",
    "History imports that ended, by outcome (done, failed).",
    ["platform", "outcome"],
)
GAPS_FILLED = Counter(
    "pagewire_history_gaps_filled",
    "Messages gap repair found in Graph that never came as a webhook, and stored.",
    ["platform"],
)

for _outcome in ("delivered", "failed"):
    ROUTER_NOTICES.labels(_outcome)
for _outcome in CHECK_OUTCOMES:
    RECONCILE_CHECKS.labels(_outcome)
for _platform in PLATFORMS:
    RECONCILE_REPAIRS.labels(_platform.lower())
    GAPS_FILLED.labels(_platform.lower())
    for _result in ("stored", "duplicate"):
        HISTORY_MESSAGES.labels(_platform.lower(), _result)
    for _outcome in ("done", "failed"):
        HISTORY_IMPORTS.labels(_platform.lower(), _outcome)


async def refresh_pages(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Sets pagewire_pages from the database (every known pair, 0 when absent)."""
    async with sessions() as session:
        counts = await store.count_by_status(session)
    for platform in PLATFORMS:
        for status in STATUSES:
            PAGES.labels(platform.lower(), status).set(counts.pop((platform, status), 0))
    for (platform, status), count in counts.items():
        PAGES.labels(platform.lower(), status).set(count)
    async with sessions() as session:
        ROUTER_NOTICES_PENDING.set(await store.undelivered_notices(session))
