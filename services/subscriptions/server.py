"""The SubscriptionsService servicer: validates requests, calls Connections, maps results."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import grpc

from pagewire.kit import telemetry
from pagewire.kit.errors import InvalidArgument, NotFound
from pagewire.kit.principal import current
from pagewire.kit.settings import Secret
from pagewire.kit.validate import page_token, platform_and_page
from pagewire.proto import events_pb2, subscriptions_pb2, subscriptions_pb2_grpc
from services.subscriptions.access import SERVICE_NAME, require_page
from services.subscriptions.config import FIELD_NAME
from services.subscriptions.connections import Connections
from services.subscriptions.details import Details, DetailsReader
from services.subscriptions.gaps import GapRepair
from services.subscriptions.history import MAX_DAYS, HistoryImporter, HistoryView
from services.subscriptions.reconcile import Check, Reconciler
from services.subscriptions.store import PageConnection

__all__ = ["SERVICE_NAME", "SubscriptionsServiceServicer", "register"]

_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PAGE_ID = re.compile(r"[0-9]{1,32}")
MAX_FIELDS = 64
MAX_IMPORT_IDS = 500
_STATUS = {
    "SUBSCRIBED": subscriptions_pb2.SUBSCRIBED,
    "SUBSCRIBE_FAILED": subscriptions_pb2.SUBSCRIBE_FAILED,
    "REAUTH_REQUIRED": subscriptions_pb2.REAUTH_REQUIRED,
}
_TOKEN_STATE = {
    "ACTIVE": subscriptions_pb2.TOKEN_ACTIVE,
    "REAUTH_REQUIRED": subscriptions_pb2.TOKEN_REAUTH_REQUIRED,
    "MISSING": subscriptions_pb2.TOKEN_MISSING,
    "UNKNOWN": subscriptions_pb2.TOKEN_UNKNOWN,
}
_HISTORY_STATE = {
    "PENDING": subscriptions_pb2.HISTORY_PENDING,
    "RUNNING": subscriptions_pb2.HISTORY_RUNNING,
    "DONE": subscriptions_pb2.HISTORY_DONE,
    "FAILED": subscriptions_pb2.HISTORY_FAILED,
}
_OUTCOME = {
    "OK": subscriptions_pb2.CHECK_OK,
    "REPAIRED": subscriptions_pb2.CHECK_REPAIRED,
    "REAUTH_REQUIRED": subscriptions_pb2.CHECK_REAUTH_REQUIRED,
    "FAILED": subscriptions_pb2.CHECK_FAILED,
    "SKIPPED": subscriptions_pb2.CHECK_SKIPPED,
}


def page_of(platform: int, page_id: str) -> tuple[str, str]:
    """(platform name, page id) of a request, or InvalidArgument naming the field."""
    name, page = platform_and_page(platform, page_id)
    telemetry.annotate(platform=name.lower(), page_id=page)
    return name, page


def account_of(account_id: str, *, required: bool = True) -> str:
    if not account_id:
        if required:
            raise InvalidArgument("account_id", "is required")
        return ""
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise InvalidArgument(
            "account_id", "must be 1-64 letters, digits, '_', '.' or '-', starting alphanumeric"
        )
    return account_id


def token_of(token: str) -> Secret:
    """The request's page token, checked without ever putting it in a message."""
    return page_token(token, "page_token")


def fields_of(fields: list[str]) -> list[str]:
    if len(fields) > MAX_FIELDS:
        raise InvalidArgument("subscribed_fields", f"at most {MAX_FIELDS} fields")
    for index, name in enumerate(fields):
        if not FIELD_NAME.fullmatch(name):
            raise InvalidArgument(
                f"subscribed_fields[{index}]", "must be a webhook field name (a-z, 0-9, _)"
            )
    return list(dict.fromkeys(fields))  # duplicates would be sent twice to Graph


def page_ids_of(page_ids: Sequence[str]) -> list[str]:
    if len(page_ids) > MAX_IMPORT_IDS:
        raise InvalidArgument("page_ids", f"at most {MAX_IMPORT_IDS} page ids")
    for index, page_id in enumerate(page_ids):
        if not _PAGE_ID.fullmatch(page_id):
            raise InvalidArgument(f"page_ids[{index}]", "must be 1 to 32 digits")
    return list(page_ids)


def days_of(days: int, name: str) -> int:
    """A history window in days: 0 (the default) to MAX_DAYS."""
    if not 0 <= days <= MAX_DAYS:
        raise InvalidArgument(name, f"must be 0 (the default) to {MAX_DAYS} days")
    return days


def history_to_proto(view: HistoryView) -> subscriptions_pb2.History:
    return subscriptions_pb2.History(
        state=_HISTORY_STATE[view.state],
        since_ms=view.since_ms,
        days=view.days,
        conversations_total=view.conversations_total,
        conversations_done=view.conversations_done,
        messages_read=view.messages_read,
        messages_stored=view.messages_stored,
        graph_calls=view.graph_calls,
        error=view.error,
        error_code=view.error_code,
        requested_at_ms=view.requested_at_ms,
        started_at_ms=view.started_at_ms,
        finished_at_ms=view.finished_at_ms,
        updated_at_ms=view.updated_at_ms,
    )


def to_proto(
    page: PageConnection, details: Details | None = None, history: HistoryView | None = None
) -> subscriptions_pb2.Page:
    extra = {}
    if history is not None:
        extra["history"] = history_to_proto(history)
    if details is not None:
        token = details.token
        extra["token"] = subscriptions_pb2.PageToken(
            state=_TOKEN_STATE.get(token.status, subscriptions_pb2.TOKEN_UNKNOWN),
            reason=token.reason,
            expires_at_ms=token.expires_at_ms,
            updated_at_ms=token.updated_at_ms,
            graph_code=token.graph_code,
            graph_subcode=token.graph_subcode,
        )
        activity = details.activity
        extra["activity"] = (
            subscriptions_pb2.PageActivity(known=True, **activity)
            if activity is not None
            else subscriptions_pb2.PageActivity(known=False)
        )
    return subscriptions_pb2.Page(
        platform=events_pb2.Platform.Value(page.platform),
        page_id=page.page_id,
        account_id=page.account_id,
        status=_STATUS[page.status],
        subscribed_fields=page.fields,
        last_error=page.last_error,
        last_error_code=page.last_error_code,
        last_error_subcode=page.last_error_subcode,
        created_at_ms=page.created_at_ms,
        updated_at_ms=page.updated_at_ms,
        last_checked_at_ms=page.last_checked_at_ms,
        repairs=page.repairs,
        last_repair=page.last_repair,
        last_repair_at_ms=page.last_repair_at_ms,
        human_agent=page.human_agent,
        **extra,
    )


def check_to_proto(check: Check) -> subscriptions_pb2.PageCheck:
    return subscriptions_pb2.PageCheck(
        platform=events_pb2.Platform.Value(check.platform),
        page_id=check.page_id,
        outcome=_OUTCOME[check.outcome],
        detail=check.detail,
        token_refreshed=check.token_refreshed,
    )


class SubscriptionsServiceServicer(subscriptions_pb2_grpc.SubscriptionsServiceServicer):
    """Every RPC of pagewire.subscriptions.v1.SubscriptionsService; who may call what is
    SUBSCRIPTIONS_ACCESS (services/subscriptions/access.py), each for its accounts."""

    def __init__(
        self,
        connections: Connections,
        reconciler: Reconciler,
        details: DetailsReader,
        history: HistoryImporter,
        gaps: GapRepair,
    ) -> None:
        self._connections = connections
        self._reconciler = reconciler
        self._details = details
        self._history = history
        self._gaps = gaps

    async def _pages(self, pages: list[PageConnection], with_details: bool):  # type: ignore[no-untyped-def]
        histories = await self._history.views([(p.platform, p.page_id) for p in pages])
        if not with_details:
            return [to_proto(p, None, histories.get((p.platform, p.page_id))) for p in pages]
        details = await self._details.read(pages)
        return [
            to_proto(p, d, histories.get((p.platform, p.page_id)))
            for p, d in zip(pages, details, strict=True)
        ]

    async def ConnectPage(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        account_id = account_of(request.account_id)
        token = token_of(request.page_token)
        fields = fields_of(list(request.subscribed_fields))
        if request.token_expires_at_ms < 0:
            raise InvalidArgument("token_expires_at_ms", "must be 0 (unknown) or a time in ms")
        history_days = days_of(request.history_days, "history_days")
        if request.no_history and history_days:
            raise InvalidArgument("history_days", "give no_history or history_days, not both")
        principal = current()
        principal.require(account_id)
        existing = await self._connections.find(platform, page_id)
        if existing is not None and existing.account_id != account_id:
            # Moving (or being told the page is taken) needs the current owner too.
            await require_page(principal, self._connections, platform, page_id)
        result = await self._connections.connect(
            platform,
            page_id,
            account_id,
            token,
            fields,
            move=request.move,
            token_expires_at_ms=request.token_expires_at_ms,
            human_agent=request.human_agent,
            history_days=None if request.no_history else history_days,
        )
        (shown,) = await self._pages([result.page], False)
        return subscriptions_pb2.ConnectPageResponse(page=shown, parked_routed=result.parked_routed)

    async def DisconnectPage(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        await require_page(current(), self._connections, platform, page_id)
        result = await self._connections.disconnect(platform, page_id, purge=request.purge)
        purged = result.purged or {}
        return subscriptions_pb2.DisconnectPageResponse(
            unsubscribed=result.unsubscribed,
            graph_error=result.graph_error,
            purged=result.purged is not None,
            purged_conversations=purged.get("conversations", 0),
            purged_messages=purged.get("messages", 0),
            purged_parked=purged.get("parked", 0),
            purge_error=result.purge_error,
        )

    async def GetPage(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        await require_page(current(), self._connections, platform, page_id)
        page = await self._connections.get(platform, page_id)
        (shown,) = await self._pages([page], request.with_details)
        return subscriptions_pb2.GetPageResponse(page=shown)

    async def ListPages(self, request, context):  # type: ignore[no-untyped-def]
        account_id = account_of(request.account_id, required=False)
        if account_id:
            current().require(account_id)
        else:
            current().require_every_account("every account's pages (give account_id)")
        pages = await self._connections.list_pages(account_id)
        return subscriptions_pb2.ListPagesResponse(
            pages=await self._pages(pages, request.with_details)
        )

    async def ImportPages(self, request, context):  # type: ignore[no-untyped-def]
        user_token = page_token(request.user_token, "user_token")
        account_id = account_of(request.account_id)
        page_ids = page_ids_of(list(request.page_ids))
        if request.all and page_ids:
            raise InvalidArgument("page_ids", "give page ids or all, not both")
        fields = fields_of(list(request.subscribed_fields))
        current().require(account_id)
        result = await self._connections.import_pages(
            user_token,
            account_id,
            page_ids,
            connect_all=request.all,
            move=request.move,
            fields=fields,
            principal=current(),
        )
        return subscriptions_pb2.ImportPagesResponse(
            available=[
                subscriptions_pb2.ManagedPage(
                    page_id=page.page_id,
                    name=page.name,
                    tasks=list(page.tasks),
                    category=page.category,
                    connected_account_id=result.owners.get(page.page_id, ""),
                )
                for page in result.available
            ],
            connected=[to_proto(page) for page in result.connected],
            parked_routed=result.parked_routed,
        )

    async def Reconcile(self, request, context):  # type: ignore[no-untyped-def]
        platform = page_id = ""
        if request.page_id:
            platform, page_id = page_of(request.platform, request.page_id)
        elif request.platform:
            platform, _ = platform_and_page(request.platform, "0")
        account_id = account_of(request.account_id, required=False)
        if page_id:
            await require_page(current(), self._connections, platform, page_id)
        elif account_id:
            current().require(account_id)
        else:
            current().require_every_account("every page (give account_id or page_id)")
        checks = await self._reconciler.run(
            platform=platform, page_id=page_id, account_id=account_id
        )
        if page_id and not checks:
            raise NotFound(f"{platform} page {page_id} is not connected")
        counts = {name: 0 for name in _OUTCOME}
        for check in checks:
            counts[check.outcome] += 1
        return subscriptions_pb2.ReconcileResponse(
            checked=len(checks),
            ok=counts["OK"],
            repaired=counts["REPAIRED"],
            reauth_required=counts["REAUTH_REQUIRED"],
            failed=counts["FAILED"],
            skipped=counts["SKIPPED"],
            pages=[check_to_proto(check) for check in checks],
        )

    async def ImportHistory(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        days = days_of(request.days, "days")
        await require_page(current(), self._connections, platform, page_id)
        await self._connections.get(platform, page_id)  # NotFound when not connected
        view = await self._history.request(platform, page_id, days=days, restart=request.restart)
        return subscriptions_pb2.ImportHistoryResponse(history=history_to_proto(view))

    async def RepairGaps(self, request, context):  # type: ignore[no-untyped-def]
        platform = page_id = ""
        if request.page_id:
            platform, page_id = page_of(request.platform, request.page_id)
            await require_page(current(), self._connections, platform, page_id)
            await self._connections.get(platform, page_id)
        else:
            if request.platform:
                raise InvalidArgument("page_id", "is required with platform")
            current().require_every_account("every page (give platform and page_id)")
        report = await self._gaps.run(platform, page_id)
        return subscriptions_pb2.RepairGapsResponse(
            pages=report.pages,
            conversations_checked=report.conversations_checked,
            gaps_filled=report.gaps_filled,
            errors=report.errors,
        )

    async def Resubscribe(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        await require_page(current(), self._connections, platform, page_id)
        page = await self._connections.resubscribe(platform, page_id)
        return subscriptions_pb2.ResubscribeResponse(page=to_proto(page))


def register(servicer: SubscriptionsServiceServicer) -> Callable[[grpc.aio.Server], None]:
    """The `register` argument of `start_server` for this servicer."""

    def add(server: grpc.aio.Server) -> None:
        subscriptions_pb2_grpc.add_SubscriptionsServiceServicer_to_server(servicer, server)

    return add
