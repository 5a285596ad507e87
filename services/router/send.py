"""Replies through the Send API: window rules, idempotency, errors by code, echoes by mid.

Under the conversation lock: a send is recorded (PENDING) before Graph is
called, Graph is called once per part, and every returned message id is
stored as an outgoing message before the lock is released — so the echo,
whenever it arrives, finds its mid and is not stored twice, with no delay
anywhere. A retry with the same idempotency key returns the first result and
sends nothing again, on any replica; a send found PENDING (a router stopped
between Graph and the reply) is settled from its echo if one came, otherwise
marked UNKNOWN — never sent a second time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.contract import Platform
from pagewire.graph.codes import is_token_invalid
from pagewire.graph.errors import GraphError
from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PagewireError,
    Unavailable,
)
from pagewire.kit.principal import SYSTEM, Principal
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from pagewire.proto import events_pb2, router_pb2
from services.router import planner
from services.router.feed import FeedNotifier
from services.router.keys import lock_name
from services.router.mutex import ConversationLocks
from services.router.planner import attachments_json, message_row
from services.router.store import feed as store_feed
from services.router.store import reads, sends, state
from services.router.store.models import Conversation, OutboundSend

log = logging.getLogger("pagewire.router.send")

RESPONSE_WINDOW_MS = 24 * 3600 * 1000
HUMAN_AGENT_WINDOW_MS = 7 * 24 * 3600 * 1000
ATTACHMENT_TYPES = {"image", "audio", "video", "file"}
SENDER_ACTIONS = {"typing_on", "typing_off", "mark_seen"}
MAX_TEXT = 2000
MAX_QUICK_REPLIES = 13


class PageLookup(Protocol):
    async def page(self, platform: int, page_id: str, *, fresh: bool = False) -> Any: ...


class TokenSource(Protocol):
    async def decrypt(
        self, platform: str, page_id: str, on_behalf_of: str = ""
    ) -> tuple[Secret, str]: ...

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, code: int, subcode: int
    ) -> None: ...


class GraphPost(Protocol):
    async def request(self, method: str, platform: str, path: str, **kwargs: Any) -> Any: ...


@dataclass
class SendResult:
    """What a send came to; `replayed` when it is the stored result of an earlier call."""

    state: str
    mids: list[str] = field(default_factory=list)
    message_ids: list[int] = field(default_factory=list)
    messaging_type: str = ""
    tag: str = ""
    error_code: int = 0
    error_subcode: int = 0
    error_message: str = ""
    replayed: bool = False


def _window_closed(last_inbound: int) -> str:
    if not last_inbound:
        return "the person has not written to this page yet"
    return (
        f"the 24-hour window closed at {_iso(last_inbound + RESPONSE_WINDOW_MS)}"
        f" and the 7-day HUMAN_AGENT window at {_iso(last_inbound + HUMAN_AGENT_WINDOW_MS)}"
    )


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def validate(request: router_pb2.SendMessageRequest) -> None:
    """Bad input gets INVALID_ARGUMENT naming the field, before anything is recorded."""
    key = request.idempotency_key
    if not key or len(key) > 128 or not key.isprintable():
        raise InvalidArgument("idempotency_key", "is required (1-128 printable characters)")
    if not request.text and not request.attachments:
        raise InvalidArgument("text", "give text and/or attachments")
    if len(request.text) > MAX_TEXT:
        raise InvalidArgument("text", f"at most {MAX_TEXT} characters")
    for i, attachment in enumerate(request.attachments):
        if attachment.type not in ATTACHMENT_TYPES:
            raise InvalidArgument(f"attachments[{i}].type", "image, audio, video or file")
        if not attachment.url.startswith("https://"):
            raise InvalidArgument(f"attachments[{i}].url", "must be an https URL")
    if len(request.quick_replies) > MAX_QUICK_REPLIES:
        raise InvalidArgument("quick_replies", f"at most {MAX_QUICK_REPLIES}")
    for i, reply in enumerate(request.quick_replies):
        if not reply.title or len(reply.title) > 20:
            raise InvalidArgument(f"quick_replies[{i}].title", "1-20 characters")
        if len(reply.payload) > 1000:
            raise InvalidArgument(f"quick_replies[{i}].payload", "at most 1000 characters")
    if len(request.metadata) > 1000:
        raise InvalidArgument("metadata", "at most 1000 characters")


def _request_hash(request: router_pb2.SendMessageRequest) -> str:
    copy = router_pb2.SendMessageRequest()
    copy.CopyFrom(request)
    copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _parts(request: router_pb2.SendMessageRequest, metadata: str) -> list[dict[str, Any]]:
    """Send API `message` objects: the text, then one per attachment; quick replies last."""
    parts: list[dict[str, Any]] = []
    if request.text:
        parts.append({"text": request.text})
    for attachment in request.attachments:
        parts.append(
            {
                "attachment": {
                    "type": attachment.type,
                    "payload": {"url": attachment.url, "is_reusable": False},
                }
            }
        )
    if request.quick_replies:
        parts[-1]["quick_replies"] = [
            {"content_type": "text", "title": q.title, "payload": q.payload or q.title}
            for q in request.quick_replies
        ]
    for part in parts:
        part["metadata"] = metadata
    return parts


class Sender:
    """SendMessage and SendAction for the router's conversations."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        locks: ConversationLocks,
        pages: PageLookup,
        graph: GraphPost,
        tokens: TokenSource,
        *,
        app_id: str = "",
        notifier: FeedNotifier | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._locks = locks
        self._pages = pages
        self._graph = graph
        self._tokens = tokens
        self._app_id = app_id
        self._notifier = notifier
        self._clock = clock

    async def _conversation(
        self, conversation_id: str, platform: int, page_id: str, user_id: str
    ) -> Conversation:
        async with self._sessions() as session:
            if conversation_id:
                try:
                    found = await reads.conversation(session, int(conversation_id))
                except ValueError:
                    raise InvalidArgument("conversation_id", "must be a conversation id") from None
            else:
                if platform not in (events_pb2.FACEBOOK, events_pb2.INSTAGRAM):
                    raise InvalidArgument("platform", "must be FACEBOOK or INSTAGRAM")
                if not page_id or not user_id:
                    raise InvalidArgument("conversation_id", "give it, or page_id and user_id")
                found = await reads.conversation_by_key(
                    session, Platform.from_proto(platform).value, page_id, user_id
                )
        if found is None:
            raise NotFound("no such conversation (a person must write to the page first)")
        return found

    async def send(
        self, request: router_pb2.SendMessageRequest, principal: Principal = SYSTEM
    ) -> SendResult:
        """Sends as the Page for `principal`, which must reach the conversation's account
        and the page's; the send and its messages record who asked."""
        validate(request)
        conv = await self._conversation(
            request.conversation_id, request.platform, request.page_id, request.user_id
        )
        principal.require(conv.account_id)
        platform = conv.platform
        page = await self._pages.page(Platform(platform).proto, conv.page_id)
        if page is None:
            raise FailedPrecondition(f"page {conv.page_id} is not connected")
        # A page moved to another account since the conversation began: its owner now.
        principal.require(page.account_id)
        key = request.idempotency_key
        marker = request.metadata or f"pagewire:{key}"
        digest = _request_hash(request)
        lock = lock_name((platform, conv.page_id, conv.user_id))
        async with self._locks.hold(lock):
            try:
                earlier = await self._earlier(conv, key, digest, marker)
                if earlier is not None:
                    return earlier
                messaging_type, tag = await self._window(conv, request, page.human_agent)
                await self._record_pending(
                    conv, key, digest, messaging_type, tag, principal.identity
                )
            except DB_UNAVAILABLE as exc:
                raise unavailable(exc) from None
            try:
                token, _ = await self._tokens.decrypt(platform, conv.page_id, principal.identity)
            except PagewireError:
                # Nothing reached Graph: forget the intent so a retry can send.
                await self._forget_pending(conv, key)
                raise
            result = SendResult("ACCEPTED", messaging_type=messaging_type, tag=tag)
            error: GraphError | None = None
            parts = _parts(request, marker)
            for index, part in enumerate(parts):
                try:
                    body = await self._post(platform, conv, token, messaging_type, tag, part)
                except GraphError as exc:
                    error = exc
                    if index == 0 and (exc.throttled or (exc.unavailable and not exc.timed_out)):
                        # The first part never reached Graph: nothing to hide from a retry.
                        await self._forget_pending(conv, key)
                        raise Unavailable(f"Graph API unreachable: {exc.message}") from None
                    break
                result.mids.append(
                    str(body.get("message_id", "")) if isinstance(body, dict) else ""
                )
            if error is not None:
                self._fail(result, error)
            await self._record_outcome(conv, request, key, result, parts, principal.identity)
        if error is not None:
            await self._raise_for(error, platform, conv.page_id)
        return result

    async def _post(
        self,
        platform: str,
        conv: Conversation,
        token: Secret,
        messaging_type: str,
        tag: str,
        message: dict[str, Any],
    ) -> Any:
        data = {
            "recipient": json.dumps({"id": conv.user_id}),
            "messaging_type": messaging_type,
            "message": json.dumps(message, ensure_ascii=False),
        }
        if tag:
            data["tag"] = tag
        # A timed-out send may have been delivered: never repeat it (at most once).
        return await self._graph.request(
            "POST",
            platform,
            f"{conv.page_id}/messages",
            token=token,
            data=data,
            object_id=conv.page_id,
            retry_timeouts=False,
        )

    @staticmethod
    def _fail(result: SendResult, error: GraphError) -> None:
        result.error_code, result.error_subcode = error.code, error.subcode
        if error.timed_out:
            result.state = "UNKNOWN"
            result.error_message = "Graph did not answer in time; not sent again"
        else:
            result.state = "REJECTED"
            result.error_message = error.message[:500]

    async def _raise_for(self, error: GraphError, platform: str, page_id: str) -> None:
        """190 → re-authorization and FAILED_PRECONDITION; retryable codes exhausted →
        UNAVAILABLE; a permanent refusal is an answer, not an error."""
        if is_token_invalid(error.code, error.subcode):
            try:
                await self._tokens.mark_invalid(
                    platform, page_id, "send refused: token invalid", error.code, error.subcode
                )
            except PagewireError as exc:
                log.warning("could not mark the token invalid", extra={"error": type(exc).__name__})
            raise FailedPrecondition(
                f"Graph refused the page token ({error.code}/{error.subcode});"
                f" page {page_id} needs re-authorization"
            )
        if error.transient or error.unavailable:
            raise Unavailable(f"Graph API failed ({error.code}): retries exhausted")

    async def _window(
        self, conv: Conversation, request: router_pb2.SendMessageRequest, human_agent: bool
    ) -> tuple[str, str]:
        age = self._clock() - conv.last_inbound_ms
        if conv.last_inbound_ms and age <= RESPONSE_WINDOW_MS:
            return "RESPONSE", ""
        if conv.last_inbound_ms and age <= HUMAN_AGENT_WINDOW_MS and request.human_agent:
            if not human_agent:
                raise FailedPrecondition(
                    f"{_window_closed(conv.last_inbound_ms)}; page {conv.page_id} is not"
                    " enabled for the HUMAN_AGENT tag"
                )
            return "MESSAGE_TAG", "HUMAN_AGENT"
        raise FailedPrecondition(
            _window_closed(conv.last_inbound_ms)
            + ("" if request.human_agent else "; set human_agent to use the 7-day tag")
        )

    async def _earlier(
        self, conv: Conversation, key: str, digest: str, marker: str
    ) -> SendResult | None:
        async with self._sessions() as session, session.begin():
            row = await sends.find(session, conv.platform, conv.page_id, key, lock=True)
            if row is None:
                return None
            if row.request_hash != digest:
                raise FailedPrecondition("idempotency_key was already used for a different message")
            if row.state == "PENDING":
                await self._settle_pending(session, row, marker)
            return SendResult(
                row.state,
                mids=json.loads(row.mids_json),
                message_ids=await sends.message_ids(session, conv.id, key),
                messaging_type=row.messaging_type,
                tag=row.tag,
                error_code=row.error_code,
                error_subcode=row.error_subcode,
                error_message=row.error_message,
                replayed=True,
            )

    async def _settle_pending(self, session: AsyncSession, row: OutboundSend, marker: str) -> None:
        """A router stopped mid-send: the echo says whether Meta took it; never resend."""
        mids = await sends.echoed_mids(session, row.conversation_id, marker)
        row.updated_at_ms = self._clock()
        if mids:
            row.state, row.mids_json = "ACCEPTED", json.dumps(mids)
        else:
            row.state = "UNKNOWN"
            row.error_message = (
                "a router stopped between calling Graph and recording the answer; not sent again"
            )

    async def _record_pending(
        self,
        conv: Conversation,
        key: str,
        digest: str,
        messaging_type: str,
        tag: str,
        sent_by: str,
    ) -> None:
        now = self._clock()
        async with self._sessions() as session, session.begin():
            await sends.record_pending(
                session,
                OutboundSend(
                    platform=conv.platform,
                    page_id=conv.page_id,
                    idempotency_key=key,
                    conversation_id=conv.id,
                    request_hash=digest,
                    state="PENDING",
                    mids_json="[]",
                    messaging_type=messaging_type,
                    tag=tag,
                    error_code=0,
                    error_subcode=0,
                    error_message="",
                    sent_by=sent_by,
                    created_at_ms=now,
                    updated_at_ms=now,
                ),
            )

    async def _forget_pending(self, conv: Conversation, key: str) -> None:
        async with self._sessions() as session, session.begin():
            await sends.forget(session, conv.platform, conv.page_id, key)

    async def _record_outcome(
        self,
        conv: Conversation,
        request: router_pb2.SendMessageRequest,
        key: str,
        result: SendResult,
        parts: Sequence[dict[str, Any]],
        sent_by: str,
    ) -> None:
        """Every accepted part as an outgoing message (its mid is how the echo is matched),
        a failed part as a FAILED message carrying Graph's error, and the send's state."""
        now = self._clock()
        rows: list[dict[str, Any]] = []
        for index, part in enumerate(parts):
            accepted = index < len(result.mids)
            if not accepted and index > len(result.mids):
                break  # parts after the failed one were never tried
            files = "[]"
            if "attachment" in part:
                files = attachments_json(
                    [
                        planner.attachment(
                            part["attachment"]["type"], part["attachment"]["payload"]["url"]
                        )
                    ]
                )
            rows.append(
                message_row(
                    conversation_id=conv.id,
                    platform=conv.platform,
                    page_id=conv.page_id,
                    mid=result.mids[index] if accepted else f"failed:{key}:{index}",
                    direction="OUTBOUND",
                    timestamp_ms=now,
                    created_at_ms=now,
                    text=part.get("text", ""),
                    attachments=files,
                    status="SENT" if accepted else "FAILED",
                    error_code=0 if accepted else result.error_code,
                    error_subcode=0 if accepted else result.error_subcode,
                    error_message="" if accepted else result.error_message,
                    app_id=self._app_id,
                    metadata=parts[0]["metadata"],
                    idempotency_key=key,
                    sent_by=sent_by,
                )
            )
        async with self._sessions() as session, session.begin():
            # The same writer as inbound messages and echoes.
            inserted = await state.insert_messages(session, rows)
            ids = [
                inserted[(r["platform"], r["page_id"], r["mid"])]
                for r in rows
                if (r["platform"], r["page_id"], r["mid"]) in inserted
            ]
            result.message_ids.extend(ids)
            account = await sends.count_sent(session, conv.id, len(ids), now)
            send = await sends.find(session, conv.platform, conv.page_id, key)
            assert send is not None
            send.state = result.state
            send.mids_json = json.dumps(result.mids)
            send.error_code, send.error_subcode = result.error_code, result.error_subcode
            send.error_message = result.error_message
            send.updated_at_ms = now
            await session.flush()
            await store_feed.record(
                session,
                {account: [("MESSAGE_CREATED", conv.id, i, None, None, None) for i in ids]},
                now,
            )
        if self._notifier is not None and ids:
            self._notifier.notify(account)
        if result.state != "ACCEPTED":
            log.warning(
                "send failed",
                extra={
                    "page_id": conv.page_id,
                    "state": result.state,
                    "code": result.error_code,
                    "subcode": result.error_subcode,
                },
            )

    async def action(
        self, request: router_pb2.SendActionRequest, principal: Principal = SYSTEM
    ) -> None:
        """typing_on / typing_off / mark_seen; nothing is stored."""
        if request.action not in SENDER_ACTIONS:
            raise InvalidArgument("action", "typing_on, typing_off or mark_seen")
        conv = await self._conversation(
            request.conversation_id, request.platform, request.page_id, request.user_id
        )
        principal.require(conv.account_id)
        page = await self._pages.page(Platform(conv.platform).proto, conv.page_id)
        if page is not None:
            principal.require(page.account_id)
        token, _ = await self._tokens.decrypt(conv.platform, conv.page_id, principal.identity)
        try:
            await self._graph.request(
                "POST",
                conv.platform,
                f"{conv.page_id}/messages",
                token=token,
                data={
                    "recipient": json.dumps({"id": conv.user_id}),
                    "sender_action": request.action,
                },
                object_id=conv.page_id,
            )
        except GraphError as exc:
            await self._raise_for(exc, conv.platform, conv.page_id)
            raise FailedPrecondition(
                f"Graph refused the action ({exc.code}/{exc.subcode})"
            ) from None
