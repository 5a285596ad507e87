"""The SubscriptionsService servicer: validates requests, calls Connections, maps results."""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc

from pagewire.kit.errors import InvalidArgument
from pagewire.kit.settings import Secret
from pagewire.kit.validate import page_token, platform_and_page
from pagewire.proto import events_pb2, subscriptions_pb2, subscriptions_pb2_grpc
from services.subscriptions.config import FIELD_NAME
from services.subscriptions.connections import Connections
from services.subscriptions.store import PageConnection

SERVICE_NAME = subscriptions_pb2.DESCRIPTOR.services_by_name["SubscriptionsService"].full_name

_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_FIELDS = 64
_STATUS = {
    "SUBSCRIBED": subscriptions_pb2.SUBSCRIBED,
    "SUBSCRIBE_FAILED": subscriptions_pb2.SUBSCRIBE_FAILED,
    "REAUTH_REQUIRED": subscriptions_pb2.REAUTH_REQUIRED,
}


def page_of(platform: int, page_id: str) -> tuple[str, str]:
    """(platform name, page id) of a request, or InvalidArgument naming the field."""
    return platform_and_page(platform, page_id)


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


def to_proto(page: PageConnection) -> subscriptions_pb2.Page:
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
    )


class SubscriptionsServiceServicer(subscriptions_pb2_grpc.SubscriptionsServiceServicer):
    """Every RPC of pagewire.subscriptions.v1.SubscriptionsService."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    async def ConnectPage(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        account_id = account_of(request.account_id)
        token = token_of(request.page_token)
        fields = fields_of(list(request.subscribed_fields))
        result = await self._connections.connect(
            platform, page_id, account_id, token, fields, move=request.move
        )
        return subscriptions_pb2.ConnectPageResponse(
            page=to_proto(result.page), parked_routed=result.parked_routed
        )

    async def DisconnectPage(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        result = await self._connections.disconnect(platform, page_id)
        return subscriptions_pb2.DisconnectPageResponse(
            unsubscribed=result.unsubscribed, graph_error=result.graph_error
        )

    async def GetPage(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        page = await self._connections.get(platform, page_id)
        return subscriptions_pb2.GetPageResponse(page=to_proto(page))

    async def ListPages(self, request, context):  # type: ignore[no-untyped-def]
        account_id = account_of(request.account_id, required=False)
        pages = await self._connections.list_pages(account_id)
        return subscriptions_pb2.ListPagesResponse(pages=[to_proto(page) for page in pages])

    async def Resubscribe(self, request, context):  # type: ignore[no-untyped-def]
        platform, page_id = page_of(request.platform, request.page_id)
        page = await self._connections.resubscribe(platform, page_id)
        return subscriptions_pb2.ResubscribeResponse(page=to_proto(page))


def register(servicer: SubscriptionsServiceServicer) -> Callable[[grpc.aio.Server], None]:
    """The `register` argument of `start_server` for this servicer."""

    def add(server: grpc.aio.Server) -> None:
        subscriptions_pb2_grpc.add_SubscriptionsServiceServicer_to_server(servicer, server)

    return add
