"""Answering and moderating comments through Graph, once per idempotency key.

Under the thread's lock: the action is recorded (PENDING) before Graph is called,
Graph is called once, and what it did is stored before the lock is released — a
public reply as the Page's own comment (Graph's id), so its webhook, whenever it
comes, finds the comment and adds nothing; a hide, unhide or delete as the
comment's new state. A private reply (the Send API with `recipient.comment_id`)
goes once per comment and only within 7 days of it; otherwise FAILED_PRECONDITION
says which rule, and Graph is not called. The page token is decrypted by the
tokens service for this call only, on behalf of the caller, and never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.contract import Platform
from pagewire.graph.codes import is_token_invalid
from pagewire.graph.errors import GraphError
from pagewire.kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PagewireError,
    Unavailable,
)
from pagewire.kit.principal import SYSTEM, Principal
from pagewire.kit.timeutil import now_ms
from pagewire.kit.validate import platform_and_page
from pagewire.proto import router_pb2
from services.router.feed import FeedNotifier
from services.router.keys import lock_name
from services.router.mutex import ConversationLocks
from services.router.planner import THREAD, CommentState
from services.router.send import GraphPost, PageLookup, TokenSource
from services.router.store import comment_actions as actions
from services.router.store import comments as store_comments
from services.router.store import feed as store_feed
from services.router.store import reads
from services.router.store.models import Comment, CommentAction

log = logging.getLogger("pagewire.router.moderation")

PRIVATE_REPLY_WINDOW_MS = 7 * 24 * 3600 * 1000
MAX_PUBLIC_TEXT = 8000
MAX_PRIVATE_TEXT = 2000
_ACTIONS = {
    router_pb2.HIDE: "hide",
    router_pb2.UNHIDE: "unhide",
    router_pb2.DELETE: "delete",
}


@dataclass
class ActionResult:
    """What a reply or moderation came to; `replayed` when it is an earlier call's."""

    state: str
    comment: Comment | None = None
    result_id: str = ""
    error_code: int = 0
    error_subcode: int = 0
    error_message: str = ""
    replayed: bool = False


def _digest(request: Any) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _key(value: str) -> str:
    if not value or len(value) > 128 or not value.isprintable():
        raise InvalidArgument("idempotency_key", "is required (1-128 printable characters)")
    return value


def _ref(ref: router_pb2.CommentRef, present: bool) -> tuple[Platform, str, str]:
    if not present:
        raise InvalidArgument("comment", "is required")
    platform, page_id = platform_and_page(ref.platform, ref.page_id, prefix="comment.")
    if not ref.comment_id or len(ref.comment_id) > 500 or not ref.comment_id.isprintable():
        raise InvalidArgument("comment.comment_id", "is required (a Meta comment id)")
    return Platform(platform), page_id, ref.comment_id


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


class CommentActions:
    """ReplyToComment and ModerateComment for the router's comment threads."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        locks: ConversationLocks,
        pages: PageLookup,
        graph: GraphPost,
        tokens: TokenSource,
        *,
        notifier: FeedNotifier | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._sessions = sessions
        self._locks = locks
        self._pages = pages
        self._graph = graph
        self._tokens = tokens
        self.notifier = notifier
        self._clock = clock

    async def reply(
        self, request: router_pb2.ReplyToCommentRequest, principal: Principal = SYSTEM
    ) -> ActionResult:
        platform, page_id, comment_id = _ref(request.comment, request.HasField("comment"))
        key = _key(request.idempotency_key)
        limit = MAX_PRIVATE_TEXT if request.private else MAX_PUBLIC_TEXT
        if not request.text.strip() or len(request.text) > limit:
            raise InvalidArgument("text", f"is required (at most {limit} characters)")
        action = "private_reply" if request.private else "reply"
        return await self._run(
            platform, page_id, comment_id, action, key, _digest(request), principal, request.text
        )

    async def moderate(
        self, request: router_pb2.ModerateCommentRequest, principal: Principal = SYSTEM
    ) -> ActionResult:
        platform, page_id, comment_id = _ref(request.comment, request.HasField("comment"))
        key = _key(request.idempotency_key)
        action = _ACTIONS.get(request.action)
        if action is None:
            raise InvalidArgument("action", "HIDE, UNHIDE or DELETE")
        return await self._run(
            platform, page_id, comment_id, action, key, _digest(request), principal, ""
        )

    async def _run(
        self,
        platform: Platform,
        page_id: str,
        comment_id: str,
        action: str,
        key: str,
        digest: str,
        principal: Principal,
        text: str,
    ) -> ActionResult:
        comment, post_id, account = await self._comment(platform, page_id, comment_id)
        principal.require(account)
        page = await self._pages.page(platform.proto, page_id)
        if page is None:
            raise FailedPrecondition(f"page {page_id} is not connected")
        principal.require(page.account_id)
        async with self._locks.hold(lock_name((platform.value, page_id, THREAD + post_id))):
            earlier = await self._earlier(platform, page_id, key, digest)
            if earlier is not None:
                return earlier
            async with self._sessions() as session:
                comment = await reads.comment_by_id(session, platform.value, page_id, comment_id)
            assert comment is not None
            await self._check(platform, page_id, comment, action)
            now = self._clock()
            async with self._sessions() as session, session.begin():
                await actions.record(
                    session,
                    CommentAction(
                        platform=platform.value,
                        page_id=page_id,
                        idempotency_key=key,
                        comment_id=comment_id,
                        action=action,
                        request_hash=digest,
                        state="PENDING",
                        sent_by=principal.identity,
                        created_at_ms=now,
                        updated_at_ms=now,
                    ),
                )
            try:
                token, _ = await self._tokens.decrypt(platform.value, page_id, principal.identity)
            except PagewireError:
                await self._forget(platform, page_id, key)  # nothing reached Graph
                raise
            result = ActionResult("ACCEPTED")
            error: GraphError | None = None
            try:
                body = await self._call(platform, page_id, comment_id, action, token, text)
            except GraphError as exc:
                error = exc
                if exc.throttled or (exc.unavailable and not exc.timed_out):
                    await self._forget(platform, page_id, key)
                    raise Unavailable(f"Graph API unreachable: {exc.message}") from None
                result.error_code, result.error_subcode = exc.code, exc.subcode
                if exc.timed_out:
                    result.state = "UNKNOWN"
                    result.error_message = "Graph did not answer in time; not sent again"
                else:
                    result.state = "REJECTED"
                    result.error_message = exc.message[:500]
            else:
                if isinstance(body, dict):
                    result.result_id = str(body.get("id") or body.get("message_id") or "")
            result.comment = await self._record(
                platform, page_id, comment, post_id, action, key, result, text, principal
            )
        if error is not None:
            await self._raise_for(error, platform, page_id)
        return result

    async def _comment(
        self, platform: Platform, page_id: str, comment_id: str
    ) -> tuple[Comment, str, str]:
        async with self._sessions() as session:
            comment = await reads.comment_by_id(session, platform.value, page_id, comment_id)
            if comment is None:
                raise NotFound(
                    f"comment {comment_id} is not stored (its webhook must reach Pagewire first)"
                )
            thread = await reads.thread(session, comment.thread_id)
        assert thread is not None
        return comment, thread.post_id, thread.account_id

    async def _check(self, platform: Platform, page_id: str, comment: Comment, action: str) -> None:
        if comment.removed and action != "delete":
            raise FailedPrecondition(f"comment {comment.comment_id} was removed")
        if action != "private_reply":
            return
        async with self._sessions() as session:
            sent = await actions.private_reply_sent(
                session, platform.value, page_id, comment.comment_id
            )
        if sent:
            raise FailedPrecondition(
                f"comment {comment.comment_id} already has its private reply (Meta allows one"
                " per comment)"
            )
        written = comment.created_time_ms or comment.stored_at_ms
        if self._clock() - written > PRIVATE_REPLY_WINDOW_MS:
            raise FailedPrecondition(
                f"a private reply must go within 7 days of the comment; comment"
                f" {comment.comment_id} was written at {_iso(written)}, the window closed at"
                f" {_iso(written + PRIVATE_REPLY_WINDOW_MS)}"
            )

    async def _earlier(
        self, platform: Platform, page_id: str, key: str, digest: str
    ) -> ActionResult | None:
        async with self._sessions() as session, session.begin():
            row = await actions.find(session, platform.value, page_id, key, lock=True)
            if row is None:
                return None
            if row.request_hash != digest:
                raise FailedPrecondition("idempotency_key was already used for a different action")
            if row.state == "PENDING":
                # A router stopped between calling Graph and recording its answer: unknown,
                # never sent a second time.
                row.state = "UNKNOWN"
                row.error_message = "a router stopped between calling Graph and recording it"
                row.updated_at_ms = self._clock()
            comment = await reads.comment_by_id(
                session, platform.value, page_id, row.result_id or row.comment_id
            )
            return ActionResult(
                row.state,
                comment=comment,
                result_id=row.result_id,
                error_code=row.error_code,
                error_subcode=row.error_subcode,
                error_message=row.error_message,
                replayed=True,
            )

    async def _forget(self, platform: Platform, page_id: str, key: str) -> None:
        async with self._sessions() as session, session.begin():
            await actions.forget(session, platform.value, page_id, key)

    async def _call(
        self,
        platform: Platform,
        page_id: str,
        comment_id: str,
        action: str,
        token: Any,
        text: str,
    ) -> Any:
        common = {"token": token, "object_id": page_id}
        instagram = platform is Platform.INSTAGRAM
        if action == "reply":
            edge = "replies" if instagram else "comments"
            return await self._graph.request(
                "POST",
                platform.value,
                f"{comment_id}/{edge}",
                data={"message": text},
                retry_timeouts=False,
                **common,
            )
        if action == "private_reply":
            data = {
                "recipient": json.dumps({"comment_id": comment_id}),
                "message": json.dumps({"text": text}, ensure_ascii=False),
            }
            return await self._graph.request(
                "POST",
                platform.value,
                f"{page_id}/messages",
                data=data,
                retry_timeouts=False,
                **common,
            )
        if action in ("hide", "unhide"):
            flag = "true" if action == "hide" else "false"
            data = {"hide": flag} if instagram else {"is_hidden": flag}
            return await self._graph.request(
                "POST", platform.value, comment_id, data=data, **common
            )
        return await self._graph.request("DELETE", platform.value, comment_id, **common)

    async def _record(
        self,
        platform: Platform,
        page_id: str,
        comment: Comment,
        post_id: str,
        action: str,
        key: str,
        result: ActionResult,
        text: str,
        principal: Principal,
    ) -> Comment | None:
        """The action's outcome, and what it did to the thread, in one transaction."""
        now = self._clock()
        account = ""
        changes: list[tuple[str, tuple[str, str, str]]] = []
        ids: dict[tuple[str, str, str], int] = {}
        async with self._sessions() as session, session.begin():
            row = await actions.find(session, platform.value, page_id, key)
            assert row is not None
            row.state, row.result_id = result.state, result.result_id
            row.error_code, row.error_subcode = result.error_code, result.error_subcode
            row.error_message, row.updated_at_ms = result.error_message, now
            thread = await reads.thread(session, comment.thread_id)
            assert thread is not None
            account = thread.account_id
            target: tuple[str, str, str] | None = None
            if result.state == "ACCEPTED" and action == "reply" and result.result_id:
                # The Page's reply, stored now: its webhook will find it.
                state = CommentState(
                    platform.value,
                    page_id,
                    result.result_id,
                    comment.thread_id,
                    now,
                    parent_id=comment.comment_id,
                    author_id=page_id,
                    text=text,
                    original_text=text,
                    created_time_ms=now,
                    from_page=True,
                    field=comment.field,
                    media_product_type=comment.media_product_type,
                    sent_by=principal.identity,
                )
                target = (platform.value, page_id, result.result_id)
                ids.update(await store_comments.write_comments(session, [state]))
                await actions.bump_thread(session, comment.thread_id, 1, now)
                changes.append(("COMMENT_CREATED", target))
            elif result.state == "ACCEPTED" and action in ("hide", "unhide", "delete"):
                states = await store_comments.known_comments(
                    session, [(platform.value, page_id, comment.comment_id)]
                )
                state = states[(platform.value, page_id, comment.comment_id)]
                stamp = (now, f"action:{key}")
                kind = ""
                if action == "delete" and not state.removed:
                    state.removed, state.removed_ms = True, now
                    state.text = state.original_text = ""
                    kind = "COMMENT_REMOVED"
                elif action in ("hide", "unhide") and stamp > (
                    state.hidden_ms,
                    state.hidden_event_id,
                ):
                    state.hidden_ms, state.hidden_event_id = stamp
                    if state.hidden != (action == "hide"):
                        state.hidden = action == "hide"
                        kind = "COMMENT_HIDDEN"
                target = (platform.value, page_id, comment.comment_id)
                ids.update(await store_comments.write_comments(session, [state]))
                if kind:
                    changes.append((kind, target))
            if changes:
                await store_feed.record(
                    session,
                    {
                        account: [
                            (kind, None, None, None, ids.get(t), comment.thread_id)
                            for kind, t in changes
                        ]
                    },
                    now,
                )
            stored = None
            if target is not None:
                stored = await reads.comment_by_id(session, *target)
        if changes and self.notifier is not None:
            self.notifier.notify(account)
        if result.state != "ACCEPTED":
            log.warning(
                "comment action failed",
                extra={
                    "page_id": page_id,
                    "action": action,
                    "state": result.state,
                    "code": result.error_code,
                    "subcode": result.error_subcode,
                },
            )
        return stored

    async def _raise_for(self, error: GraphError, platform: Platform, page_id: str) -> None:
        """190 → re-authorization and FAILED_PRECONDITION; retries exhausted → UNAVAILABLE;
        a permanent refusal is an answer (REJECTED), not an error."""
        if is_token_invalid(error.code, error.subcode):
            try:
                await self._tokens.mark_invalid(
                    platform.value,
                    page_id,
                    "comment action refused: token invalid",
                    error.code,
                    error.subcode,
                )
            except PagewireError as exc:
                log.warning("could not mark the token invalid", extra={"error": type(exc).__name__})
            raise FailedPrecondition(
                f"Graph refused the page token ({error.code}/{error.subcode});"
                f" page {page_id} needs re-authorization"
            )
        if error.transient or error.unavailable:
            raise Unavailable(f"Graph API failed ({error.code}): retries exhausted")
