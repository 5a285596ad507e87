"""What the subscriptions domain needs from the vault, the router and Graph.

The production implementations are clients.TokensClient, clients.RouterClient
and pagewire.graph.PagesApi; the domain sees only these shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pagewire.graph import ManagedPage, RefreshedToken, SubscribedApp
from pagewire.kit.settings import Secret
from pagewire.proto import events_pb2


@dataclass(frozen=True)
class TokenState:
    """What the vault knows of a token (GetTokenStatus), never the token."""

    status: str
    reason: str = ""
    graph_code: int = 0
    graph_subcode: int = 0
    updated_at_ms: int = 0
    expires_at_ms: int = 0


class Vault(Protocol):
    """The tokens service."""

    async def put(
        self, platform: str, page_id: str, token: Secret, expires_at_ms: int = 0
    ) -> str: ...

    async def decrypt(self, platform: str, page_id: str) -> tuple[Secret, str]: ...

    async def delete(self, platform: str, page_id: str) -> bool: ...

    async def status(self, platform: str, page_id: str) -> TokenState | None: ...

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None: ...


class Router(Protocol):
    """The router service."""

    async def route_parked(
        self, platform: str, page_id: str, account_id: str, version: int = 0
    ) -> int: ...

    async def page_disconnected(self, platform: str, page_id: str, version: int) -> bool: ...

    async def page_activity(
        self, platform: str, page_id: str, timeout_s: float
    ) -> dict[str, int]: ...

    async def purge_page(self, platform: str, page_id: str) -> dict[str, int]: ...

    async def ingest(self, events: Sequence[events_pb2.Event]) -> tuple[int, int]: ...


class Graph(Protocol):
    """The page lifecycle's Graph calls."""

    async def subscribe(
        self, platform: str, page_id: str, token: Secret, fields: Sequence[str]
    ) -> None: ...

    async def unsubscribe(self, platform: str, page_id: str, token: Secret) -> None: ...

    async def subscribed_apps(
        self, platform: str, page_id: str, token: Secret
    ) -> list[SubscribedApp]: ...

    async def managed_pages(self, user_token: Secret) -> list[ManagedPage]: ...

    async def refresh_instagram_token(self, account_id: str, token: Secret) -> RefreshedToken: ...
