"""Connecting, resubscribing and disconnecting pages: the subscriptions service's logic.

Order matters. A connect stores the token before subscribing (Graph needs it,
and a failed subscription must be retryable from the vault), stores the
connection before routing parked events (the router looks the page up), and
changes nothing when the page belongs to another account and no move was asked.
Every connect, move and disconnect writes a notice for the router in the same
transaction (notices.py sends it, and again until the router has taken it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.graph import FACEBOOK, GraphError, ManagedPage
from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PagewireError,
    Unavailable,
)
from pagewire.kit.principal import SYSTEM, Principal
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from services.subscriptions import store
from services.subscriptions.notices import Notices
from services.subscriptions.ports import Graph, Router, Vault
from services.subscriptions.store import Outcome, PageConnection
from services.subscriptions.subscribing import Subscriber

log = logging.getLogger("pagewire.subscriptions")
DAY_MS = 86_400_000


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
    purged: dict[str, int] | None = None
    purge_error: str = ""


@dataclass
class Imported:
    """An import's result: what the user can manage, who owns each, what was connected."""

    available: list[ManagedPage]
    owners: dict[str, str]
    connected: list[PageConnection] = field(default_factory=list)
    parked_routed: int = 0


def outcome_of(error: GraphError | None) -> Outcome:
    """How a subscription attempt is stored: by code, never by message text."""
    if error is None:
        return Outcome(store.SUBSCRIBED)
    status = store.REAUTH_REQUIRED if error.token_invalid else store.SUBSCRIBE_FAILED
    message = error.message if not (error.unavailable or error.throttled) else error.summary
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
        app_ids: Mapping[str, str] | None = None,
        history_days: int = 90,
        history_wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._history_days = history_days
        self._history_wake = history_wake
        self._vault = vault
        self._graph = graph
        self._router = router
        self.notices = Notices(sessions, router)
        self._default_fields = default_fields
        self.subscriber = Subscriber(graph, app_ids or {})

    async def connect(
        self,
        platform: str,
        page_id: str,
        account_id: str,
        token: Secret,
        fields: Sequence[str],
        *,
        move: bool,
        token_expires_at_ms: int = 0,
        human_agent: bool = False,
        history_days: int | None = 0,
    ) -> Connected:
        """Stores the token, subscribes and confirms, stores the connection, routes parked events.

        Unless `history_days` is None the page's history import is asked for in the same
        transaction (0: the default window); a page whose import already ran or runs is
        left as it is (`pages history` starts one again).

        Idempotent for the same account. Graph refusing is not an error of this
        call: the connection is stored SUBSCRIBE_FAILED (or REAUTH_REQUIRED) for
        Resubscribe and reconcile; Graph not answering is stored the same way and
        reported UNAVAILABLE so callers know nothing was confirmed.
        """
        fields = list(fields) or list(self._default_fields[platform])
        existing = await self._get(platform, page_id)
        if existing is not None and existing.account_id != account_id and not move:
            raise FailedPrecondition(_owned_elsewhere(platform, page_id, existing, account_id))

        await self._vault.put(platform, page_id, token, token_expires_at_ms)
        error = await self.subscriber.subscribe(platform, page_id, token, fields)
        outcome = outcome_of(error)
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
                    human_agent=human_agent,
                )
                if owner is None:
                    # Another account connected the page between our check and this write.
                    current = await store.get(session, platform, page_id)
                    raise FailedPrecondition(
                        _owned_elsewhere(platform, page_id, current, account_id)
                    )
                page = await store.get(session, platform, page_id)
                assert page is not None  # just written in this transaction
                notice = await store.note_for_router(
                    session, platform, page_id, account_id, now_ms()
                )
                if history_days is not None:
                    days = history_days or self._history_days
                    await store.request_history(
                        session,
                        platform,
                        page_id,
                        days=days,
                        since_ms=now_ms() - days * DAY_MS,
                        now=now_ms(),
                        restart=False,
                        keep_finished=True,
                    )
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        if history_days is not None:
            self._history_wake()
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

        routed = await self.notices.deliver(notice) or 0
        if error is not None and (error.unavailable or error.throttled):
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
        error = await self.subscriber.subscribe(platform, page_id, token, page.fields)
        if error is None and token_status != "ACTIVE":
            # Graph accepted the token again, so the vault's REAUTH flag is stale.
            await self._vault.put(platform, page_id, token)
        if error is not None and error.token_invalid:
            await self._mark_invalid(platform, page_id, error)
        try:
            async with self._sessions() as session, session.begin():
                updated = await store.set_outcome(
                    session, platform, page_id, outcome_of(error), now_ms()
                )
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        if updated is None:
            raise NotFound(f"{platform} page {page_id} was disconnected meanwhile")
        if error is not None and (error.unavailable or error.throttled):
            raise Unavailable(f"{error.summary}; {platform} page {page_id} is SUBSCRIBE_FAILED")
        return updated

    async def disconnect(self, platform: str, page_id: str, *, purge: bool = False) -> Disconnected:
        """Unsubscribes with the page's own token (best effort), forgets the token, deletes
        the connection; with `purge` the router then deletes what it stored for the page.

        Stored conversations are kept unless `purge`. A purge of a page that is no
        longer connected is allowed, so a purge that failed can be retried.
        """
        page = await self._get(platform, page_id)
        if page is None:
            if not purge:
                raise NotFound(f"{platform} page {page_id} is not connected")
            purged, purge_error = await self._purge(platform, page_id)
            return Disconnected(False, "page was not connected", purged, purge_error)
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
                # An import running elsewhere finds its rows gone at its next write and stops.
                await store.forget_history(session, platform, page_id)
                notice = await store.note_for_router(session, platform, page_id, "", now_ms())
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        # Its events are parked from the router's next batch on; a failure is retried.
        await self.notices.deliver(notice)
        log.info(
            "page disconnected",
            extra={"platform": platform, "page_id": page_id, "unsubscribed": unsubscribed},
        )
        if not purge:
            return Disconnected(unsubscribed, graph_error)
        purged, purge_error = await self._purge(platform, page_id)
        return Disconnected(unsubscribed, graph_error, purged, purge_error)

    async def _purge(self, platform: str, page_id: str) -> tuple[dict[str, int] | None, str]:
        try:
            purged = await self._router.purge_page(platform, page_id)
        except PagewireError as exc:
            log.warning(
                "could not purge the page's stored data",
                extra={"platform": platform, "page_id": page_id, "error": str(exc)},
            )
            return None, f"{exc}; disconnect again with purge to retry"
        log.info("page data purged", extra={"platform": platform, "page_id": page_id, **purged})
        return purged, ""

    async def import_pages(
        self,
        user_token: Secret,
        account_id: str,
        page_ids: Sequence[str],
        *,
        connect_all: bool,
        move: bool,
        fields: Sequence[str],
        principal: Principal = SYSTEM,
    ) -> Imported:
        """Lists the user's Pages (`/me/accounts`) and connects the chosen ones.

        The user token is used for that one listing and then dropped: never
        stored, never logged. Every choice is checked before anything is stored,
        so a wrong id or a page owned by another account changes nothing.
        """
        try:
            available = await self._graph.managed_pages(user_token)
        except GraphError as exc:
            if exc.token_invalid:
                raise InvalidArgument("user_token", f"Graph refused it ({exc.summary})") from None
            if exc.transient:
                raise Unavailable(exc.summary) from None
            raise FailedPrecondition(f"cannot list the user's Pages: {exc.summary}") from None
        by_id = {page.page_id: page for page in available}
        for index, page_id in enumerate(page_ids):
            if page_id not in by_id:
                raise InvalidArgument(
                    f"page_ids[{index}]",
                    f"{page_id} is not among the {len(by_id)} Pages this user token can manage",
                )
        chosen = [by_id[p] for p in dict.fromkeys(page_ids)] if not connect_all else available
        owners = await self._owners([page.page_id for page in available])
        foreign = [
            p.page_id
            for p in chosen
            if p.page_id in owners and not principal.may(owners[p.page_id])
        ]
        if foreign:
            # Moving a page away from an account needs that account too; which account
            # holds it is not the caller's to learn.
            raise principal.deny_page(foreign[0])
        # Owners the caller may not see are not shown to it either.
        owners = {p: a for p, a in owners.items() if principal.may(a)}
        if not move:
            taken = [p.page_id for p in chosen if owners.get(p.page_id, account_id) != account_id]
            if taken:
                raise FailedPrecondition(
                    "facebook page(s) "
                    + ", ".join(f"{p} (account {owners[p]!r})" for p in taken)
                    + f" belong to another account, not {account_id!r};"
                    " import with move=true (--move) to move them"
                )
        result = Imported(available, owners)
        for page in chosen:
            try:
                connected = await self.connect(
                    FACEBOOK, page.page_id, account_id, page.token, fields, move=move
                )
            except Unavailable:
                # Graph not answering for one page must not strand the others; the page is
                # stored SUBSCRIBE_FAILED and reconcile or Resubscribe finishes it.
                stored = await self._get(FACEBOOK, page.page_id)
                if stored is None:
                    raise
                result.connected.append(stored)
            else:
                result.connected.append(connected.page)
                result.parked_routed += connected.parked_routed
            owners[page.page_id] = account_id
        log.info(
            "pages imported",
            extra={
                "account_id": account_id,
                "available": len(available),
                "connected": [p.page_id for p in result.connected],
            },
        )
        return result

    async def _owners(self, page_ids: Sequence[str]) -> dict[str, str]:
        try:
            async with self._sessions() as session:
                pages = await store.list_pages(session, platform=FACEBOOK)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        wanted = set(page_ids)
        return {p.page_id: p.account_id for p in pages if p.page_id in wanted}

    async def find(self, platform: str, page_id: str) -> PageConnection | None:
        """The page's connection, or None when it is not connected."""
        return await self._get(platform, page_id)

    async def get(self, platform: str, page_id: str) -> PageConnection:
        page = await self._get(platform, page_id)
        if page is None:
            raise NotFound(f"{platform} page {page_id} is not connected")
        return page

    async def list_pages(
        self, account_id: str = "", platform: str = "", page_id: str = ""
    ) -> list[PageConnection]:
        try:
            async with self._sessions() as session:
                return await store.list_pages(session, account_id, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None

    async def _get(self, platform: str, page_id: str) -> PageConnection | None:
        try:
            async with self._sessions() as session:
                return await store.get(session, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None

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


def _owned_elsewhere(
    platform: str, page_id: str, current: PageConnection | None, account_id: str
) -> str:
    owner = current.account_id if current is not None else "another account"
    return (
        f"{platform} page {page_id} belongs to account {owner!r}, not {account_id!r};"
        " connect with move=true to move it"
    )
