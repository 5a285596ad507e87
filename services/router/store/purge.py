"""The purge of a page: every row stored for it, children first, and its tombstone."""

from __future__ import annotations

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store import pages
from services.router.store.models import (
    Change,
    Comment,
    CommentAction,
    CommentEdit,
    CommentThread,
    Contact,
    Conversation,
    EventLog,
    Message,
    MessageEdit,
    MessageMark,
    PostReaction,
    Reaction,
)


async def purge_page(
    session: AsyncSession, platform: str, page_id: str, now: int
) -> dict[str, int]:
    """Deletes the page's rows; the append then drops its events up to the newest Meta time
    seen for it (or now), which is what a redelivery of a purged body carries."""
    newest = (
        await session.execute(
            select(func.max(EventLog.timestamp_ms)).where(
                EventLog.platform == platform, EventLog.page_id == page_id
            )
        )
    ).scalar_one_or_none()
    # Not connected from now on (the row stays, so no replica learns the page again).
    await pages.set_account(session, platform, page_id, "", 0, now)
    await pages.tombstone(session, platform, page_id, max(now, newest or 0))
    conversations = select(Conversation.id).where(
        Conversation.platform == platform, Conversation.page_id == page_id
    )
    page_events = select(EventLog.id).where(
        EventLog.platform == platform, EventLog.page_id == page_id
    )
    threads = select(CommentThread.id).where(
        CommentThread.platform == platform, CommentThread.page_id == page_id
    )
    await session.execute(
        delete(Change).where(
            or_(
                Change.conversation_id.in_(conversations),
                Change.event_row_id.in_(page_events),
                Change.thread_id.in_(threads),
            )
        )
    )
    parked = (
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
    counts = {"parked": int(parked)}
    for label, model in (
        ("", EventLog),
        ("", MessageEdit),
        ("", Reaction),
        ("", MessageMark),
        ("", CommentEdit),
        ("", PostReaction),
        ("", CommentAction),
        ("comments", Comment),
        ("", CommentThread),
        ("messages", Message),
        ("conversations", Conversation),
        ("", Contact),
    ):
        result = await session.execute(
            delete(model).where(model.platform == platform, model.page_id == page_id)
        )
        if label:
            counts[label] = result.rowcount
    return counts
