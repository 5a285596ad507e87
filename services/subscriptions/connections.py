"""Connecting, resubscribing and disconnecting pages: the subscriptions service's logic.

Order matters. A connect stores the token before subscribing (Graph needs it,
and a failed subscription must be retryable from the vault), stores the
connection before routing parked events (the router looks the page up), and
changes nothing when the page belongs to another account and no move was asked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import (
    DataLoss,
    FailedPrecondition,
    NotFound,
    PagewireError,
    Unavailable,
)
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from services.subscriptions import store
from services.subscriptions.graph import GraphError
from services.subscriptions.store import Outcome, PageConnection

log = logging.getLogger("pagewire.subscriptions")


class Vault(Protocol):
    """What the domain needs from the tokens service (clients.TokensClient)."""

    async def put(self, platform: str, page_id: str, token: Secret) -> str: ...

    async def decrypt(self, platform: str, page_id: str) -> tuple[Secret, str]: ...

    async def delete(self, platform: str, page_id: str) -> bool: ...

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None: ...


class Router(Protocol):
    """What the domain needs from the router (clients.RouterClient)."""

    async def route_parked(self, platform: str, page_id: str) -> int: ...


class Graph(Protocol):
    """What the domain needs from Graph (graph.GraphClient)."""

    async def subscribe(
        self, platform: str, page_id: str, token: Secret, fields: Sequence[str]
    ) -> None: ...

    async def unsubscribe(self, platform: str, page_id: str, token: Secret) -> None: ...


@dataclass(frozen=True)
class Connected:
    """A connect's result: the stored connection and how many parked events were routed."""

    page: PageConnection
    parked_routed: int


@dataclass(frozen=True)
class Disconnected:
    """A disconnect's result; the page is gone even when Graph could not be told."""

    unsubscribed: bool
    graph_error: str


def _outcome(error: GraphError | None) -> Outcome:
    if error is None:
        return Outcome(store.SUBSCRIBED)
    status = store.REAUTH_REQUIRED if error.token_invalid else store.SUBSCRIBE_FAILED
    message = error.message if not error.unavailable else error.summary
    return Outcome(status, message, error.code, error.subcode)


class Connections:
    """Page connections: the domain behind every SubscriptionsService RPC."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        vault: Vault,
        graph: Graph,
        router: Router,
        default_fields: Mapping[str, Sequence[str]],
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._graph = graph
        self._router = router
        self._default_fields = default_fields

    async def connect(
        self,
        platform: str,
        page_id: str,
        account_id: str,
        token: Secret,
        fields: Sequence[str],
        *,
        move: bool,
    ) -> Connected:
        """Stores the token, subscribes, stores the connection, routes parked events.

        Idempotent for the same account. Graph refusing is not an error of this
        call: the connection is stored SUBSCRIBE_FAILED (or REAUTH_REQUIRED) for
        Resubscribe; Graph not answering is stored the same way and reported
        UNAVAILABLE so callers know nothing was confirmed.
        """
        fields = list(fields) or list(self._default_fields[platform])
        existing = await self._get(platform, page_id)
        if existing is not None and existing.account_id != account_id and not move:
            raise FailedPrecondition(_owned_elsewhere(platform, page_id, existing, account_id))

        await self._vault.put(platform, page_id, token)
        error = await self._subscribe(platform, page_id, token, fields)
        outcome = _outcome(error)
        if error is not None and error.token_invalid:
            await self._mark_invalid(platform, page_id, error)

        try:
            async with self._sessions() as session, session.begin():
                owner = await store.save_connection(
                    session,
                    platform=platform,
                    page_id=page_id,
                    account_id=account_id,
                    fields=fields,
                    outcome=outcome,
                    allow_move=move,
                    now=now_ms(),
                )
                if owner is None:
                    # Another account connected the page between our check and this write.
                    current = await store.get(session, platform, page_id)
                    raise FailedPrecondition(
                        _owned_elsewhere(platform, page_id, current, account_id)
                    )
                page = await store.get(session, platform, page_id)
                assert page is not None  # just written in this transaction
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        if existing is not None and existing.account_id != account_id:
            log.info(
                "page moved to another account",
                extra={
                    "platform": platform,
                    "page_id": page_id,
                    "from_account": existing.account_id,
                    "to_account": account_id,
                },
            )
        log.info(
            "page connected",
            extra={
                "platform": platform,
                "page_id": page_id,
                "account_id": account_id,
                "status": page.status,
            },
        )

        routed = await self._route_parked(platform, page_id)
        if error is not None and error.unavailable:
            raise Unavailable(
                f"{error.summary}; {platform} page {page_id} is stored as SUBSCRIBE_FAILED,"
                " call Resubscribe to retry"
            )
        return Connected(page, routed)

    async def resubscribe(self, platform: str, page_id: str) -> PageConnection:
        """Subscribes a connected page again with its stored token and fields."""
        page = await self._get(platform, page_id)
        if page is None:
            raise NotFound(f"{platform} page {page_id} is not connected")
        try:
            token, token_status = await self._vault.decrypt(platform, page_id)
        except NotFound:
            raise FailedPrecondition(
                f"no token stored for {platform} page {page_id}; connect the page again"
            ) from None
        error = await self._subscribe(platform, page_id, token, page.fields)
        if error is None and token_status != "ACTIVE":
            # Graph accepted the token again, so the vault's REAUTH flag is stale.
            await self._vault.put(platform, page_id, token)
        if error is not None and error.token_invalid:
            await self._mark_invalid(platform, page_id, error)
        try:
            async with self._sessions() as session, session.begin():
                updated = await store.set_outcome(
                    session, platform, page_id, _outcome(error), now_ms()
                )
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        if updated is None:
            raise NotFound(f"{platform} page {page_id} was disconnected meanwhile")
        if error is not None and error.unavailable:
            raise Unavailable(f"{error.summary}; {platform} page {page_id} is SUBSCRIBE_FAILED")
        return updated

    async def disconnect(self, platform: str, page_id: str) -> Disconnected:
        """Unsubscribes (best effort), forgets the token, deletes the connection."""
        page = await self._get(platform, page_id)
        if page is None:
            raise NotFound(f"{platform} page {page_id} is not connected")
        unsubscribed, graph_error = False, ""
        try:
            token, _status = await self._vault.decrypt(platform, page_id)
        except NotFound:
            graph_error = "no token stored, so the app could not be unsubscribed"
        except (DataLoss, FailedPrecondition) as exc:
            graph_error = f"token unusable, so the app could not be unsubscribed: {exc}"
        else:
            try:
                await self._graph.unsubscribe(platform, page_id, token)
                unsubscribed = True
            except GraphError as exc:
                graph_error = exc.summary
        # Tokens unreachable raises here, before the connection goes: a retry finishes the job.
        await self._vault.delete(platform, page_id)
        try:
            async with self._sessions() as session, session.begin():
                await store.delete_connection(session, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        log.info(
            "page disconnected",
            extra={"platform": platform, "page_id": page_id, "unsubscribed": unsubscribed},
        )
        return Disconnected(unsubscribed, graph_error)

    async def get(self, platform: str, page_id: str) -> PageConnection:
        page = await self._get(platform, page_id)
        if page is None:
            raise NotFound(f"{platform} page {page_id} is not connected")
        return page

    async def list_pages(self, account_id: str = "") -> list[PageConnection]:
        try:
            async with self._sessions() as session:
                return await store.list_pages(session, account_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None

    async def _get(self, platform: str, page_id: str) -> PageConnection | None:
        try:
            async with self._sessions() as session:
                return await store.get(session, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None

    async def _subscribe(
        self, platform: str, page_id: str, token: Secret, fields: Sequence[str]
    ) -> GraphError | None:
        try:
            await self._graph.subscribe(platform, page_id, token, fields)
        except GraphError as exc:
            return exc
        return None

    async def _mark_invalid(self, platform: str, page_id: str, error: GraphError) -> None:
        try:
            reason = error.message or "token refused by Graph"
            await self._vault.mark_invalid(platform, page_id, reason, error.code, error.subcode)
        except PagewireError as exc:
            # The connection still records REAUTH_REQUIRED, which is what operators see.
            log.warning(
                "could not mark the token invalid",
                extra={"platform": platform, "page_id": page_id, "error": str(exc)},
            )

    async def _route_parked(self, platform: str, page_id: str) -> int:
        try:
            return await self._router.route_parked(platform, page_id)
        except PagewireError as exc:
            # Connecting again retries it; the connection itself is already stored.
            log.warning(
                "could not route parked events",
                extra={"platform": platform, "page_id": page_id, "error": str(exc)},
            )
            return 0


def _owned_elsewhere(
    platform: str, page_id: str, current: PageConnection | None, account_id: str
) -> str:
    owner = current.account_id if current is not None else "another account"
    return (
        f"{platform} page {page_id} belongs to account {owner!r}, not {account_id!r};"
        " connect with move=true to move it"
    )
