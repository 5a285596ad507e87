"""The tokens service's metrics: DecryptToken calls by caller and outcome, tokens by status."""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.tokens import store

PLATFORMS = ("FACEBOOK", "INSTAGRAM")
STATUSES = ("ACTIVE", "REAUTH_REQUIRED")

DECRYPT_CALLS = Counter(
    "pagewire_decrypt_token_calls",
    "DecryptToken calls by caller (certificate identity) and outcome (OK or the status).",
    ["caller", "outcome"],
)
TOKENS = Gauge(
    "pagewire_page_tokens",
    "Stored page tokens by platform and status, read from the database every 30 s.",
    ["platform", "status"],
)


async def refresh_tokens(sessions: async_sessionmaker[AsyncSession]) -> None:
    """Sets pagewire_page_tokens from the database (every known pair, 0 when absent)."""
    async with sessions() as session:
        counts = await store.count_by_status(session)
    for platform in PLATFORMS:
        for status in STATUSES:
            TOKENS.labels(platform.lower(), status).set(counts.pop((platform, status), 0))
    for (platform, status), count in counts.items():
        TOKENS.labels(platform.lower(), status).set(count)
