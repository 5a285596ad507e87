"""Read-only statements: conversations, messages with their edits and reactions, the log, a
page's activity — each limited to a set of accounts when the caller's is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store.models import (
    Change,
    Comment,
    CommentEdit,
    CommentThread,
    Contact,
    Conversation,
    EventLog,
    Message,
    MessageEdit,
    PostReaction,
    Reaction,
)

Accounts = frozenset[str] | None  # None: every account


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


def _in_accounts(column, accounts: Accounts):  # type: ignore[no-untyped-def]
    return True if accounts is None else column.in_(sorted(accounts))


async def conversation(session: AsyncSession, conversation_id: int) -> Conversation | None:
    return await session.get(Conversation, conversation_id)


async def conversation_by_key(
    session: AsyncSession, platform: str, page_id: str, user_id: str
) -> Conversation | None:
    return (
        await session.execute(
            select(Conversation).where(
                Conversation.platform == platform,
                Conversation.page_id == page_id,
                Conversation.user_id == user_id,
            )
        )
    ).scalar_one_or_none()


async def conversations(
    session: AsyncSession,
    *,
    account_id: str,
    page_id: str,
    platform: str | None,
    accounts: Accounts,
    limit: int,
    offset: int,
) -> list[tuple[Conversation, Contact]]:
    query = (
        select(Conversation, Contact)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(
            True if platform is None else Conversation.platform == platform,
            _in_accounts(Conversation.account_id, accounts),
        )
    )
    if account_id:
        query = query.where(Conversation.account_id == account_id)
    if page_id:
        query = query.where(Conversation.page_id == page_id)
    query = query.order_by(Conversation.last_event_ms.desc(), Conversation.id.desc())
    return [tuple(r) for r in await session.execute(query.limit(limit).offset(offset))]  # type: ignore[misc]


async def messages(
    session: AsyncSession,
    *,
    conversation_id: int | None,
    page_id: str,
    user_id: str,
    platform: str | None,
    accounts: Accounts,
    limit: int,
    offset: int,
) -> list[MessageView]:
    query = select(Message)
    if conversation_id is not None:
        query = query.where(Message.conversation_id == conversation_id)
    else:
        inner = select(Conversation.id).where(
            Conversation.page_id == page_id,
            True if platform is None else Conversation.platform == platform,
            _in_accounts(Conversation.account_id, accounts),
        )
        if user_id:
            inner = inner.where(Conversation.user_id == user_id)
        query = query.where(Message.conversation_id.in_(inner))
    # Meta's timestamp orders; the mid breaks ties, so the order is the same whatever order
    # the webhooks arrived in.
    query = query.order_by(Message.timestamp_ms, Message.mid)
    rows = (await session.execute(query.limit(limit).offset(offset))).scalars().all()
    return await message_views(session, rows)


async def messages_by_id(session: AsyncSession, ids: Sequence[int]) -> list[MessageView]:
    if not ids:
        return []
    rows = (
        (
            await session.execute(
                select(Message).where(Message.id.in_(list(ids))).order_by(Message.id)
            )
        )
        .scalars()
        .all()
    )
    return await message_views(session, rows)


async def events(
    session: AsyncSession,
    *,
    conversation_id: int | None,
    page_id: str,
    user_id: str,
    platform: str | None,
    kinds: Sequence[str],
    accounts: Accounts,
    limit: int,
    offset: int,
) -> Sequence[EventLog]:
    query = select(EventLog)
    if conversation_id is not None:
        query = query.where(EventLog.conversation_id == conversation_id)
    else:
        query = query.where(
            EventLog.page_id == page_id,
            True if platform is None else EventLog.platform == platform,
        )
        if user_id:
            query = query.where(EventLog.user_id == user_id)
        if accounts is not None:
            allowed = select(Conversation.id).where(Conversation.account_id.in_(sorted(accounts)))
            # The page's own events (no conversation) came with the page check.
            query = query.where(
                EventLog.conversation_id.is_(None) | EventLog.conversation_id.in_(allowed)
            )
    if kinds:
        query = query.where(EventLog.kind.in_(list(kinds)))
    query = query.order_by(EventLog.timestamp_ms, EventLog.event_id)
    return (await session.execute(query.limit(limit).offset(offset))).scalars().all()


async def page_activity(session: AsyncSession, platform: str, page_id: str) -> dict[str, int]:
    """Last event and counts for one page (subscriptions shows them in `pages list`)."""
    last = (
        await session.execute(
            select(func.max(EventLog.timestamp_ms), func.max(EventLog.stored_at_ms)).where(
                EventLog.platform == platform, EventLog.page_id == page_id
            )
        )
    ).one()
    counts = {}
    for name, model in (("conversations", Conversation), ("messages", Message)):
        counts[name] = (
            await session.execute(
                select(func.count())
                .select_from(model)
                .where(model.platform == platform, model.page_id == page_id)
            )
        ).scalar_one()
    counts["parked"] = (
        await session.execute(
            select(func.count())
            .select_from(EventLog)
            .where(
                EventLog.platform == platform,
                EventLog.page_id == page_id,
                EventLog.state == "parked",
            )
        )
    ).scalar_one()
    return {"last_event_ms": last[0] or 0, "last_stored_at_ms": last[1] or 0, **counts}


@dataclass
class CommentView:
    """A stored comment with its thread's post id, its edits and its reactions by type."""

    row: Comment
    post_id: str
    edits: list[CommentEdit] = field(default_factory=list)
    reactions: dict[str, int] = field(default_factory=dict)


@dataclass
class ThreadView:
    """A stored thread with its post's reactions by type."""

    row: CommentThread
    reactions: dict[str, int] = field(default_factory=dict)


async def _reaction_counts(
    session: AsyncSession, threads: Sequence[CommentThread]
) -> dict[tuple[str, str, str, str], dict[str, int]]:
    """(platform, page, post, comment) → reaction type → count, removed ones left out."""
    if not threads:
        return {}
    counts: dict[tuple[str, str, str, str], dict[str, int]] = {}
    for platform, page, post in {(t.platform, t.page_id, t.post_id) for t in threads}:
        rows = await session.execute(
            select(PostReaction.comment_id, PostReaction.reaction_type, func.count())
            .where(
                PostReaction.platform == platform,
                PostReaction.page_id == page,
                PostReaction.post_id == post,
                PostReaction.verb != "remove",
            )
            .group_by(PostReaction.comment_id, PostReaction.reaction_type)
        )
        for comment_id, reaction_type, count in rows.all():
            counts.setdefault((platform, page, post, comment_id), {})[reaction_type] = count
    return counts


async def comment_views(
    session: AsyncSession, rows: Sequence[Comment]
) -> tuple[list[CommentView], list[ThreadView]]:
    """The comments with edits and reactions, and their threads."""
    thread_ids = sorted({r.thread_id for r in rows})
    threads = (
        (await session.execute(select(CommentThread).where(CommentThread.id.in_(thread_ids))))
        .scalars()
        .all()
        if thread_ids
        else []
    )
    by_id = {t.id: t for t in threads}
    counts = await _reaction_counts(session, threads)
    views = [CommentView(r, by_id[r.thread_id].post_id) for r in rows]
    by_key = {(v.row.platform, v.row.page_id, v.row.comment_id): v for v in views}
    if by_key:
        edits = await session.execute(
            select(CommentEdit)
            .where(CommentEdit.comment_id.in_([v.row.comment_id for v in views]))
            .order_by(CommentEdit.timestamp_ms, CommentEdit.event_id)
        )
        for edit in edits.scalars():
            view = by_key.get((edit.platform, edit.page_id, edit.comment_id))
            if view is not None:
                view.edits.append(edit)
    for view in views:
        row = view.row
        view.reactions = counts.get((row.platform, row.page_id, view.post_id, row.comment_id), {})
    thread_views = [
        ThreadView(t, counts.get((t.platform, t.page_id, t.post_id, ""), {})) for t in threads
    ]
    return views, thread_views


async def comments(
    session: AsyncSession,
    *,
    page_id: str,
    platform: str | None,
    post_id: str,
    author_id: str,
    accounts: Accounts,
    limit: int,
    offset: int,
) -> tuple[list[CommentView], list[ThreadView]]:
    query = (
        select(Comment)
        .join(CommentThread, CommentThread.id == Comment.thread_id)
        .where(
            Comment.page_id == page_id,
            True if platform is None else Comment.platform == platform,
            _in_accounts(CommentThread.account_id, accounts),
        )
    )
    if post_id:
        query = query.where(CommentThread.post_id == post_id)
    if author_id:
        query = query.where(Comment.author_id == author_id)
    query = query.order_by(Comment.thread_id, Comment.created_time_ms, Comment.comment_id)
    rows = (await session.execute(query.limit(limit).offset(offset))).scalars().all()
    return await comment_views(session, rows)


async def comment_by_id(
    session: AsyncSession, platform: str, page_id: str, comment_id: str
) -> Comment | None:
    return (
        await session.execute(
            select(Comment).where(
                Comment.platform == platform,
                Comment.page_id == page_id,
                Comment.comment_id == comment_id,
            )
        )
    ).scalar_one_or_none()


async def thread(session: AsyncSession, thread_id: int) -> CommentThread | None:
    return await session.get(CommentThread, thread_id)


@dataclass
class ChangeState:
    """A feed change with the rows it names, as they are now."""

    change: Change
    conversation: Conversation | None = None
    contact: Contact | None = None
    message: MessageView | None = None
    event: EventLog | None = None
    comment: CommentView | None = None
    thread: ThreadView | None = None


async def change_state(session: AsyncSession, change: Change) -> ChangeState:
    state = ChangeState(change)
    if change.conversation_id is not None:
        state.conversation = await session.get(Conversation, change.conversation_id)
        if state.conversation is not None:
            state.contact = await session.get(Contact, state.conversation.contact_id)
    if change.message_id is not None:
        message = await session.get(Message, change.message_id)
        if message is not None:
            (state.message,) = await message_views(session, [message])
    if change.event_row_id is not None:
        state.event = await session.get(EventLog, change.event_row_id)
    if change.comment_row_id is not None:
        comment = await session.get(Comment, change.comment_row_id)
        if comment is not None:
            (state.comment,), _ = await comment_views(session, [comment])
    if change.thread_id is not None:
        found = await session.get(CommentThread, change.thread_id)
        if found is not None:
            counts = await _reaction_counts(session, [found])
            state.thread = ThreadView(
                found, counts.get((found.platform, found.page_id, found.post_id, ""), {})
            )
    return state
