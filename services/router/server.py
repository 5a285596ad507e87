"""The router's gRPC servicer: it only translates between protos and the domain modules
(ingest, apply's monitor, parking, reading, send)."""

from __future__ import annotations

import json

import grpc
from sqlalchemy.ext.asyncio import async_sessionmaker

from pagewire.contract import Origin, Platform
from pagewire.kit import telemetry
from pagewire.kit.errors import FailedPrecondition, InvalidArgument, PagewireError
from pagewire.kit.principal import current
from pagewire.kit.timeutil import now_ms
from pagewire.kit.validate import platform_and_page
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from services.router import metrics
from services.router.access import SERVICE_NAME, PageOwners, require_origins
from services.router.apply import LogMonitor
from services.router.feed import FeedNotifier, changes_after
from services.router.ingest import Appender
from services.router.moderation import CommentActions
from services.router.parking import Pages
from services.router.reading import History
from services.router.send import Sender
from services.router.store import Contact, Conversation, EventLog
from services.router.store.reads import CommentView, MessageView, ThreadView

__all__ = ["SERVICE_NAME", "RouterServiceServicer"]


def _conversation(row: Conversation, contact: Contact | None = None) -> router_pb2.Conversation:
    profile = None
    if contact is not None:
        profile = router_pb2.ContactProfile(
            name=contact.name,
            first_name=contact.first_name,
            last_name=contact.last_name,
            username=contact.username,
            profile_pic=contact.profile_pic,
            checked_at_ms=contact.profile_checked_at_ms,
            error=contact.profile_error,
        )
    return router_pb2.Conversation(
        contact=profile,
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
        thread_owner_app_id=row.thread_owner_app_id,
        last_inbound_ms=row.last_inbound_ms,
    )


def _event(row: EventLog) -> router_pb2.StoredEvent:
    return router_pb2.StoredEvent(
        event_id=row.event_id,
        kind=row.kind,
        platform=events_pb2.Platform.Value(row.platform),
        page_id=row.page_id,
        user_id=row.user_id,
        conversation_id=str(row.conversation_id or ""),
        direction=events_pb2.Direction.Value(row.direction),
        timestamp_ms=row.timestamp_ms,
        standby=row.standby,
        raw_json=row.raw_json,
    )


def _message(view: MessageView) -> router_pb2.Message:
    row = view.row
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
        kind=row.kind,
        payload=row.payload,
        original_text=row.original_text,
        edits=[
            router_pb2.MessageEdit(num_edit=e.num_edit, text=e.text, timestamp_ms=e.timestamp_ms)
            for e in view.edits
        ],
        reactions=[
            router_pb2.Reaction(
                user_id=r.user_id, reaction=r.reaction, emoji=r.emoji, timestamp_ms=r.timestamp_ms
            )
            for r in view.reactions
        ],
        deleted=row.deleted,
        is_unsupported=row.is_unsupported,
        reply_to_story_url=row.reply_to_story_url,
        referral_json=row.referral_json,
        error_code=row.error_code,
        error_subcode=row.error_subcode,
        error_message=row.error_message,
        idempotency_key=row.idempotency_key,
        sent_by=row.sent_by,
        origin=Origin(row.origin).proto,
    )


def _thread(view: ThreadView) -> router_pb2.CommentThread:
    row = view.row
    return router_pb2.CommentThread(
        id=str(row.id),
        account_id=row.account_id,
        platform=events_pb2.Platform.Value(row.platform),
        page_id=row.page_id,
        post_id=row.post_id,
        media_product_type=row.media_product_type,
        comment_count=row.comment_count,
        last_activity_ms=row.last_activity_ms,
        reactions=view.reactions,
    )


def _comment(view: CommentView) -> router_pb2.Comment:
    row = view.row
    return router_pb2.Comment(
        id=str(row.id),
        thread_id=str(row.thread_id),
        comment_id=row.comment_id,
        post_id=view.post_id,
        parent_id=row.parent_id,
        author_id=row.author_id,
        author_name=row.author_name,
        text=row.text,
        original_text=row.original_text,
        created_time_ms=row.created_time_ms,
        edits=[
            router_pb2.CommentEdit(text=e.text, timestamp_ms=e.timestamp_ms) for e in view.edits
        ],
        hidden=row.hidden,
        removed=row.removed,
        from_page=row.from_page,
        mention=row.mention,
        field=row.field,
        ad_id=row.ad_id,
        ad_title=row.ad_title,
        attachment_url=row.attachment_url,
        reactions=view.reactions,
        sent_by=row.sent_by,
        platform=events_pb2.Platform.Value(row.platform),
        page_id=row.page_id,
    )


class RouterServiceServicer(router_pb2_grpc.RouterServiceServicer):
    """Every RPC of pagewire.router.v1.RouterService; who may call what is ROUTER_ACCESS
    (services/router/access.py), and readers see only their accounts."""

    def __init__(
        self,
        *,
        appender: Appender,
        pages: Pages,
        history: History,
        monitor: LogMonitor,
        notifier: FeedNotifier,
        sessions: async_sessionmaker,
        sender: Sender | None = None,
        comment_actions: CommentActions | None = None,
    ) -> None:
        self._appender = appender
        self._pages = pages
        self._history = history
        self._monitor = monitor
        self._notifier = notifier
        self._sessions = sessions
        self._sender = sender
        self._comment_actions = comment_actions
        self._owners = PageOwners(pages)

    async def _require_page(self, platform: int, page_id: str) -> None:
        """A page-wide read: the page must belong to one of the caller's accounts."""
        if page_id:
            await self._owners.require(current(), platform, page_id)

    async def Ingest(
        self, request: router_pb2.IngestRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.IngestResponse:
        require_origins(current(), request.events)
        result = await self._appender.ingest(request.events)
        return router_pb2.IngestResponse(stored=result.stored, duplicates=result.duplicates)

    async def ListConversations(
        self, request: router_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListConversationsResponse:
        await self._require_page(request.platform, request.page_id)
        rows, token = await self._history.conversations(
            account_id=request.account_id,
            page_id=request.page_id,
            platform=request.platform,
            page_size=request.page_size,
            page_token=request.page_token,
            principal=current(),
        )
        return router_pb2.ListConversationsResponse(
            conversations=[_conversation(c, contact) for c, contact in rows],
            next_page_token=token,
        )

    async def ListMessages(
        self, request: router_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListMessagesResponse:
        if not request.conversation_id:
            await self._require_page(request.platform, request.page_id)
        rows, token = await self._history.messages(
            conversation_id=request.conversation_id,
            page_id=request.page_id,
            user_id=request.user_id,
            platform=request.platform,
            page_size=request.page_size,
            page_token=request.page_token,
            principal=current(),
        )
        return router_pb2.ListMessagesResponse(
            messages=[_message(r) for r in rows], next_page_token=token
        )

    async def RouteParked(
        self, request: router_pb2.RouteParkedRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteParkedResponse:
        platform, page_id = platform_and_page(request.platform, request.page_id)
        routed = await self._pages.route_parked(
            Platform(platform), page_id, request.account_id, request.version
        )
        return router_pb2.RouteParkedResponse(
            routed=routed.unparked, moved_conversations=routed.moved_conversations
        )

    async def PageDisconnected(
        self, request: router_pb2.PageDisconnectedRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.PageDisconnectedResponse:
        platform, page_id = platform_and_page(request.platform, request.page_id)
        applied = await self._pages.disconnected(Platform(platform), page_id, request.version)
        return router_pb2.PageDisconnectedResponse(applied=applied)

    async def GetPageActivity(
        self, request: router_pb2.GetPageActivityRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetPageActivityResponse:
        platform, page_id = platform_and_page(request.platform, request.page_id)
        return router_pb2.GetPageActivityResponse(
            **await self._history.page_activity(Platform(platform), page_id)
        )

    async def PurgePage(
        self, request: router_pb2.PurgePageRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.PurgePageResponse:
        platform, page_id = platform_and_page(request.platform, request.page_id)
        counts = await self._pages.purge(Platform(platform), page_id)
        return router_pb2.PurgePageResponse(**counts)

    async def ListEvents(
        self, request: router_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListEventsResponse:
        if not request.conversation_id:
            await self._require_page(request.platform, request.page_id)
        rows, token = await self._history.events(
            principal=current(),
            conversation_id=request.conversation_id,
            page_id=request.page_id,
            user_id=request.user_id,
            platform=request.platform,
            kinds=list(request.kinds),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return router_pb2.ListEventsResponse(
            events=[_event(r) for r in rows], next_page_token=token
        )

    async def StreamEvents(
        self, request: router_pb2.StreamEventsRequest, context: grpc.aio.ServicerContext
    ):  # type: ignore[no-untyped-def]
        if not request.account_id:
            raise InvalidArgument("account_id", "is required")
        if request.after_cursor < 0:
            raise InvalidArgument("after_cursor", "must be 0 or a cursor from this feed")
        current().require(request.account_id)
        async for change in changes_after(
            self._sessions, request.account_id, request.after_cursor, self._notifier
        ):
            yield await self._change(change)

    async def _change(self, change) -> router_pb2.Change:  # type: ignore[no-untyped-def]
        """The change with the conversation and message as they are now."""
        out = router_pb2.Change(
            cursor=change.cursor,
            kind=router_pb2.ChangeKind.Value(change.kind),
            account_id=change.account_id,
            committed_at_ms=change.committed_at_ms,
        )
        now = await self._history.change_state(change)
        if now.conversation is not None:
            out.conversation.CopyFrom(_conversation(now.conversation, now.contact))
        if now.message is not None:
            out.message.CopyFrom(_message(now.message))
        if now.event is not None:
            out.event.CopyFrom(_event(now.event))
        if now.comment is not None:
            out.comment.CopyFrom(_comment(now.comment))
        if now.thread is not None:
            out.thread.CopyFrom(_thread(now.thread))
        return out

    async def SendMessage(
        self, request: router_pb2.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SendMessageResponse:
        if self._sender is None:
            raise FailedPrecondition("sending is not configured on this router")
        try:
            result = await self._sender.send(request, current())
        except PagewireError as exc:
            metrics.SENDS.labels(exc.status.lower()).inc()
            raise
        outcome = "replayed" if result.replayed else result.state.lower()
        metrics.SENDS.labels(outcome).inc()
        telemetry.annotate(send_outcome=outcome, parts=len(result.mids))
        views = await self._history.messages_by_id(result.message_ids)
        return router_pb2.SendMessageResponse(
            state=router_pb2.SendState.Value(result.state),
            mids=[m for m in result.mids if m],
            messages=[_message(v) for v in views],
            messaging_type=result.messaging_type,
            tag=result.tag,
            error_code=result.error_code,
            error_subcode=result.error_subcode,
            error_message=result.error_message,
            replayed=result.replayed,
        )

    async def SendAction(
        self, request: router_pb2.SendActionRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SendActionResponse:
        if self._sender is None:
            raise FailedPrecondition("sending is not configured on this router")
        await self._sender.action(request, current())
        return router_pb2.SendActionResponse()

    async def GetLogStatus(
        self, request: router_pb2.GetLogStatusRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetLogStatusResponse:
        status = await self._monitor.read()
        oldest = now_ms() - status.oldest_pending_ms if status.oldest_pending_ms else 0
        return router_pb2.GetLogStatusResponse(
            pending=status.pending,
            leased=status.leased,
            parked=status.parked,
            failed=status.failed,
            renormalizing=status.renormalizing,
            oldest_pending_age_ms=max(0, oldest),
        )

    async def ListComments(
        self, request: router_pb2.ListCommentsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListCommentsResponse:
        await self._require_page(request.platform, request.page_id)
        views, threads, token = await self._history.comments(
            page_id=request.page_id,
            platform=request.platform,
            post_id=request.post_id,
            author_id=request.author_id,
            page_size=request.page_size,
            page_token=request.page_token,
            principal=current(),
        )
        return router_pb2.ListCommentsResponse(
            comments=[_comment(v) for v in views],
            threads=[_thread(t) for t in threads],
            next_page_token=token,
        )

    async def ReplyToComment(
        self, request: router_pb2.ReplyToCommentRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ReplyToCommentResponse:
        if self._comment_actions is None:
            raise FailedPrecondition("replying is not configured on this router")
        result = await self._comment_actions.reply(request, current())
        telemetry.annotate(comment_action="private_reply" if request.private else "reply")
        view = await self._history.comment_view(result.comment)
        return router_pb2.ReplyToCommentResponse(
            state=router_pb2.SendState.Value(result.state),
            reply=_comment(view) if view is not None and not request.private else None,
            mid=result.result_id if request.private else "",
            error_code=result.error_code,
            error_subcode=result.error_subcode,
            error_message=result.error_message,
            replayed=result.replayed,
        )

    async def ModerateComment(
        self, request: router_pb2.ModerateCommentRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ModerateCommentResponse:
        if self._comment_actions is None:
            raise FailedPrecondition("moderating is not configured on this router")
        result = await self._comment_actions.moderate(request, current())
        view = await self._history.comment_view(result.comment)
        return router_pb2.ModerateCommentResponse(
            state=router_pb2.SendState.Value(result.state),
            comment=_comment(view) if view is not None else None,
            error_code=result.error_code,
            error_subcode=result.error_subcode,
            error_message=result.error_message,
            replayed=result.replayed,
        )

    async def ReprocessEvents(
        self, request: router_pb2.ReprocessEventsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ReprocessEventsResponse:
        marked = await self._pages.reprocess(
            platform=request.platform,
            page_id=request.page_id,
            kinds=list(request.kinds),
            since_ms=request.since_ms,
        )
        return router_pb2.ReprocessEventsResponse(marked=marked)
