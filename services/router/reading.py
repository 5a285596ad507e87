"""Reading stored state back: conversations and messages, in Meta's order."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.kit.errors import InvalidArgument, NotFound
from pagewire.kit.principal import SYSTEM, Principal
from pagewire.proto import events_pb2
from services.router.store import (
    Contact,
    Conversation,
    EventLog,
    Message,
    MessageEdit,
    ParkedEvent,
    Reaction,
)

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


def _platform_filter(column, platform: int):  # type: ignore[no-untyped-def]
    if platform == events_pb2.PLATFORM_UNSPECIFIED:
        return True
    if platform not in (events_pb2.FACEBOOK, events_pb2.INSTAGRAM):
        raise InvalidArgument("platform", "must be FACEBOOK, INSTAGRAM or unspecified")
    return column == events_pb2.Platform.Name(platform)


@dataclass
class MessageView:
    """A stored message with its edit history and current reactions."""

    row: Message
    edits: list[MessageEdit] = field(default_factory=list)
    reactions: list[Reaction] = field(default_factory=list)


async def message_views(session: AsyncSession, rows: Sequence[Message]) -> list[MessageView]:
    """Attaches edits (by num_edit) and live reactions (by person) to each message."""
    views = [MessageView(row) for row in rows]
    by_key = {(v.row.platform, v.row.page_id, v.row.mid): v for v in views}
    if not by_key:
        return views
    mids = [v.row.mid for v in views]
    edits = await session.execute(
        select(MessageEdit)
        .where(MessageEdit.mid.in_(mids))
        .order_by(MessageEdit.num_edit, MessageEdit.timestamp_ms, MessageEdit.event_id)
    )
    for edit in edits.scalars():
        view = by_key.get((edit.platform, edit.page_id, edit.mid))
        if view is not None:
            view.edits.append(edit)
    reactions = await session.execute(
        select(Reaction)
        .where(Reaction.mid.in_(mids), Reaction.action == "react")
        .order_by(Reaction.user_id)
    )
    for reaction in reactions.scalars():
        view = by_key.get((reaction.platform, reaction.page_id, reaction.mid))
        if view is not None:
            view.reactions.append(reaction)
    return views


def _allowed_conversations(principal: Principal):  # type: ignore[no-untyped-def]
    """Ids of the conversations of the principal's accounts (a subquery), or None: all."""
    if principal.accounts is None:
        return None
    return select(Conversation.id).where(Conversation.account_id.in_(sorted(principal.accounts)))


class History:
    """Read-only queries over the router's tables, limited to the principal's accounts.

    A conversation of another account is PERMISSION_DENIED (never an empty list); a
    page's rows are filtered to the principal's accounts as well, after the caller
    checked that the page itself is theirs.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def _conversation_of(
        self, session: AsyncSession, conversation_id: str, principal: Principal
    ) -> int:
        """The conversation's id once it exists and the principal may read it."""
        try:
            wanted = int(conversation_id)
        except ValueError:
            raise InvalidArgument("conversation_id", "must be a conversation id") from None
        found = await session.get(Conversation, wanted)
        if found is None:
            raise NotFound(f"conversation {conversation_id} not found")
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
        query = (
            select(Conversation, Contact)
            .join(Contact, Contact.id == Conversation.contact_id)
            .where(_platform_filter(Conversation.platform, platform))
        )
        if account_id:
            query = query.where(Conversation.account_id == account_id)
        if page_id:
            query = query.where(Conversation.page_id == page_id)
        if principal.accounts is not None:
            query = query.where(Conversation.account_id.in_(sorted(principal.accounts)))
        query = query.order_by(Conversation.last_event_ms.desc(), Conversation.id.desc())
        async with self._sessions() as session:
            rows = [tuple(r) for r in (await session.execute(query.limit(limit).offset(offset)))]
        return rows, _next_token(offset, limit, len(rows))  # type: ignore[return-value]

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
        async with self._sessions() as session:
            query = select(Message)
            if conversation_id:
                wanted = await self._conversation_of(session, conversation_id, principal)
                query = query.where(Message.conversation_id == wanted)
            else:
                inner = select(Conversation.id).where(
                    Conversation.page_id == page_id,
                    _platform_filter(Conversation.platform, platform),
                )
                if user_id:
                    inner = inner.where(Conversation.user_id == user_id)
                if principal.accounts is not None:
                    inner = inner.where(Conversation.account_id.in_(sorted(principal.accounts)))
                query = query.where(Message.conversation_id.in_(inner))
            # Meta's timestamp orders; the mid breaks ties, so the order is the same
            # whatever order the webhooks arrived in.
            query = query.order_by(Message.timestamp_ms, Message.mid)
            rows = (await session.execute(query.limit(limit).offset(offset))).scalars().all()
            views = await message_views(session, rows)
        return views, _next_token(offset, limit, len(rows))

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
        async with self._sessions() as session:
            query = select(EventLog)
            if conversation_id:
                wanted = await self._conversation_of(session, conversation_id, principal)
                query = query.where(EventLog.conversation_id == wanted)
            else:
                query = query.where(
                    EventLog.page_id == page_id, _platform_filter(EventLog.platform, platform)
                )
                if user_id:
                    query = query.where(EventLog.user_id == user_id)
                allowed = _allowed_conversations(principal)
                if allowed is not None:
                    # The page's own events (no conversation) came with the page check.
                    query = query.where(
                        EventLog.conversation_id.is_(None) | EventLog.conversation_id.in_(allowed)
                    )
            if kinds:
                query = query.where(EventLog.kind.in_(list(kinds)))
            query = query.order_by(EventLog.timestamp_ms, EventLog.event_id)
            rows = (await session.execute(query.limit(limit).offset(offset))).scalars().all()
        return rows, _next_token(offset, limit, len(rows))

    async def page_activity(self, platform: str, page_id: str) -> dict[str, int]:
        """Last event and counts for one page (subscriptions shows them in `pages list`)."""
        async with self._sessions() as session:
            last = (
                await session.execute(
                    select(func.max(EventLog.timestamp_ms), func.max(EventLog.stored_at_ms)).where(
                        EventLog.platform == platform, EventLog.page_id == page_id
                    )
                )
            ).one()
            counts = {}
            for name, model in (
                ("conversations", Conversation),
                ("messages", Message),
                ("parked", ParkedEvent),
            ):
                counts[name] = (
                    await session.execute(
                        select(func.count())
                        .select_from(model)
                        .where(model.platform == platform, model.page_id == page_id)
                    )
                ).scalar_one()
        return {"last_event_ms": last[0] or 0, "last_stored_at_ms": last[1] or 0, **counts}
