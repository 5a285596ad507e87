"""The router's gRPC servicer: validate, call routing or history, translate to protos."""

from __future__ import annotations

import json

import grpc

from pagewire.kit.validate import platform_and_page
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from services.router.history import History
from services.router.routing import Router
from services.router.store import Conversation, Message

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def _conversation(row: Conversation) -> router_pb2.Conversation:
    return router_pb2.Conversation(
        id=str(row.id),
        account_id=row.account_id,
        platform=events_pb2.Platform.Value(row.platform),
        page_id=row.page_id,
        user_id=row.user_id,
        last_event_ms=row.last_event_ms,
        message_count=row.message_count,
        delivery_watermark_ms=row.delivery_watermark_ms,
        read_watermark_ms=row.read_watermark_ms,
        created_at_ms=row.created_at_ms,
    )


def _message(row: Message) -> router_pb2.Message:
    return router_pb2.Message(
        id=str(row.id),
        conversation_id=str(row.conversation_id),
        mid=row.mid,
        direction=events_pb2.Direction.Value(row.direction),
        text=row.text,
        attachments=[events_pb2.Attachment(**a) for a in json.loads(row.attachments_json)],
        timestamp_ms=row.timestamp_ms,
        is_echo=row.is_echo,
        app_id=row.app_id,
        metadata=row.metadata_,
        quick_reply_payload=row.quick_reply_payload,
        reply_to_mid=row.reply_to_mid,
        status=router_pb2.MessageStatus.Value(row.status),
        standby=row.standby,
    )


class RouterServiceServicer(router_pb2_grpc.RouterServiceServicer):
    """Ingest, listing and parked-event routing over gRPC."""

    def __init__(self, router: Router, history: History) -> None:
        self._router = router
        self._history = history

    async def Ingest(
        self, request: router_pb2.IngestRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.IngestResponse:
        result = await self._router.ingest(request.events)
        return router_pb2.IngestResponse(
            stored=result.stored, duplicates=result.duplicates, parked=result.parked
        )

    async def ListConversations(
        self, request: router_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListConversationsResponse:
        rows, token = await self._history.conversations(
            account_id=request.account_id,
            page_id=request.page_id,
            platform=request.platform,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return router_pb2.ListConversationsResponse(
            conversations=[_conversation(r) for r in rows], next_page_token=token
        )

    async def ListMessages(
        self, request: router_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListMessagesResponse:
        rows, token = await self._history.messages(
            conversation_id=request.conversation_id,
            page_id=request.page_id,
            user_id=request.user_id,
            platform=request.platform,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return router_pb2.ListMessagesResponse(
            messages=[_message(r) for r in rows], next_page_token=token
        )

    async def RouteParked(
        self, request: router_pb2.RouteParkedRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteParkedResponse:
        result = await self._router.route_parked(request.platform, request.page_id)
        return router_pb2.RouteParkedResponse(routed=result.stored, duplicates=result.duplicates)

    async def GetPageActivity(
        self, request: router_pb2.GetPageActivityRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetPageActivityResponse:
        platform, page_id = platform_and_page(request.platform, request.page_id)
        return router_pb2.GetPageActivityResponse(
            **await self._history.page_activity(platform, page_id)
        )

    async def PurgePage(
        self, request: router_pb2.PurgePageRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.PurgePageResponse:
        platform_and_page(request.platform, request.page_id)
        counts = await self._router.purge_page(request.platform, request.page_id)
        return router_pb2.PurgePageResponse(**counts)
