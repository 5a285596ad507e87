"""Reading stored state back: conversations, messages, the log, a page's activity, the feed.

Limited to the principal's accounts: a conversation of another account is
PERMISSION_DENIED (never an empty list); a page's rows are filtered to the
principal's accounts as well, after the caller checked that the page itself is
theirs. What was just acknowledged becomes visible here after the apply lag.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.contract import Platform
from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import InvalidArgument, NotFound
from pagewire.kit.principal import SYSTEM, Principal
from pagewire.proto import events_pb2
from services.router.store import reads
from services.router.store.models import Change, Comment, Contact, Conversation, EventLog
from services.router.store.reads import ChangeState, CommentView, MessageView, ThreadView

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def _page(page_size: int, page_token: str) -> tuple[int, int]:
    """(limit, offset) from a request's paging fields."""
    if page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return limit, 0
    try:
        offset = int(base64.urlsafe_b64decode(page_token.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token", "is not a token this service issued") from None
    if offset < 0:
        raise InvalidArgument("page_token", "is not a token this service issued")
    return limit, offset


def _next_token(offset: int, limit: int, got: int) -> str:
    if got < limit:
        return ""
    return base64.urlsafe_b64encode(str(offset + limit).encode()).decode()


def platform_filter(platform: int) -> str | None:
    """The platform a page query is limited to; None: both."""
    if platform == events_pb2.PLATFORM_UNSPECIFIED:
        return None
    try:
        return Platform.from_proto(platform).value
    except ValueError:
        raise InvalidArgument("platform", "must be FACEBOOK, INSTAGRAM or unspecified") from None


def _conversation_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument("conversation_id", "must be a conversation id") from None


class History:
    """Read-only queries over the router's tables, each in a session of its own."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def _readable(self, session: AsyncSession, value: str, principal: Principal) -> int:
        """The conversation's id once it exists and the principal may read it."""
        wanted = _conversation_id(value)
        found = await reads.conversation(session, wanted)
        if found is None:
            raise NotFound(f"conversation {value} not found")
        principal.require(found.account_id)
        return wanted

    async def conversations(
        self,
        *,
        account_id: str,
        page_id: str,
        platform: int,
        page_size: int,
        page_token: str,
        principal: Principal = SYSTEM,
    ) -> tuple[Sequence[tuple[Conversation, Contact]], str]:
        if not account_id and not page_id:
            raise InvalidArgument("account_id", "give account_id or page_id")
        if account_id:
            principal.require(account_id)
        limit, offset = _page(page_size, page_token)
        wanted = platform_filter(platform)
        try:
            async with self._sessions() as session:
                rows = await reads.conversations(
                    session,
                    account_id=account_id,
                    page_id=page_id,
                    platform=wanted,
                    accounts=principal.accounts,
                    limit=limit,
                    offset=offset,
                )
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        return rows, _next_token(offset, limit, len(rows))

    async def messages(
        self,
        *,
        conversation_id: str,
        page_id: str,
        user_id: str,
        platform: int,
        page_size: int,
        page_token: str,
        principal: Principal = SYSTEM,
    ) -> tuple[Sequence[MessageView], str]:
        limit, offset = _page(page_size, page_token)
        if not conversation_id and not page_id:
            raise InvalidArgument("conversation_id", "give conversation_id or page_id")
        wanted = platform_filter(platform)
        async with self._sessions() as session:
            conv = (
                await self._readable(session, conversation_id, principal)
                if conversation_id
                else None
            )
            views = await reads.messages(
                session,
                conversation_id=conv,
                page_id=page_id,
                user_id=user_id,
                platform=wanted,
                accounts=principal.accounts,
                limit=limit,
                offset=offset,
            )
        return views, _next_token(offset, limit, len(views))

    async def events(
        self,
        *,
        conversation_id: str,
        page_id: str,
        user_id: str,
        platform: int,
        kinds: Sequence[str],
        page_size: int,
        page_token: str,
        principal: Principal = SYSTEM,
    ) -> tuple[Sequence[EventLog], str]:
        limit, offset = _page(page_size, page_token)
        if not conversation_id and not page_id:
            raise InvalidArgument("conversation_id", "give conversation_id or page_id")
        wanted = platform_filter(platform)
        async with self._sessions() as session:
            conv = (
                await self._readable(session, conversation_id, principal)
                if conversation_id
                else None
            )
            rows = await reads.events(
                session,
                conversation_id=conv,
                page_id=page_id,
                user_id=user_id,
                platform=wanted,
                kinds=kinds,
                accounts=principal.accounts,
                limit=limit,
                offset=offset,
            )
        return rows, _next_token(offset, limit, len(rows))

    async def comments(
        self,
        *,
        page_id: str,
        platform: int,
        post_id: str,
        author_id: str,
        page_size: int,
        page_token: str,
        principal: Principal = SYSTEM,
    ) -> tuple[list[CommentView], list[ThreadView], str]:
        if not page_id:
            raise InvalidArgument("page_id", "is required")
        limit, offset = _page(page_size, page_token)
        wanted = platform_filter(platform)
        async with self._sessions() as session:
            views, threads = await reads.comments(
                session,
                page_id=page_id,
                platform=wanted,
                post_id=post_id,
                author_id=author_id,
                accounts=principal.accounts,
                limit=limit,
                offset=offset,
            )
        return views, threads, _next_token(offset, limit, len(views))

    async def comment_view(self, comment: Comment | None) -> CommentView | None:
        """A comment as readers see it (edits, reactions, its post)."""
        if comment is None:
            return None
        async with self._sessions() as session:
            (view,), _ = await reads.comment_views(session, [comment])
        return view

    async def messages_by_id(self, ids: Sequence[int]) -> list[MessageView]:
        async with self._sessions() as session:
            return await reads.messages_by_id(session, ids)

    async def page_activity(self, platform: Platform, page_id: str) -> dict[str, int]:
        async with self._sessions() as session:
            return await reads.page_activity(session, platform.value, page_id)

    async def change_state(self, change: Change) -> ChangeState:
        async with self._sessions() as session:
            return await reads.change_state(session, change)
