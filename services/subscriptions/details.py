"""What `pages list` shows beside the connection: the token's state and the router's activity.

Asked of the vault and the router for each page with bounded concurrency; a
peer that cannot answer makes that column "unknown", never the whole list fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pagewire.kit.errors import PagewireError
from services.subscriptions.ports import Router, TokenState, Vault
from services.subscriptions.store import PageConnection

log = logging.getLogger("pagewire.subscriptions")

MISSING = "MISSING"
UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Details:
    """A page's token state (status MISSING / UNKNOWN when so) and activity (None: unknown)."""

    token: TokenState
    activity: dict[str, int] | None


class DetailsReader:
    """Reads token states and router activity for many pages at once."""

    def __init__(
        self, vault: Vault, router: Router, *, timeout_s: float, concurrency: int = 16
    ) -> None:
        self._vault = vault
        self._router = router
        self._timeout = timeout_s
        self._concurrency = concurrency

    async def read(self, pages: Sequence[PageConnection]) -> list[Details]:
        gate = asyncio.Semaphore(self._concurrency)

        async def one(page: PageConnection) -> Details:
            async with gate:
                token, activity = await asyncio.gather(self._token(page), self._activity(page))
                return Details(token, activity)

        return list(await asyncio.gather(*(one(page) for page in pages)))

    async def _token(self, page: PageConnection) -> TokenState:
        try:
            state = await self._vault.status(page.platform, page.page_id)
        except PagewireError as exc:
            log.debug("token status unknown", extra={"page_id": page.page_id, "error": str(exc)})
            return TokenState(UNKNOWN, reason=str(exc))
        return state if state is not None else TokenState(MISSING, reason="no token stored")

    async def _activity(self, page: PageConnection) -> dict[str, int] | None:
        try:
            return await self._router.page_activity(page.platform, page.page_id, self._timeout)
        except PagewireError as exc:
            log.debug("page activity unknown", extra={"page_id": page.page_id, "error": str(exc)})
            return None
