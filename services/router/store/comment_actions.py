"""Statements of the comment actions (replies, private replies, moderation): the record
written before Graph is called, and its outcome."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store.models import CommentAction


async def find(
    session: AsyncSession, platform: str, page_id: str, key: str, *, lock: bool = False
) -> CommentAction | None:
    query = select(CommentAction).where(
        CommentAction.platform == platform,
        CommentAction.page_id == page_id,
        CommentAction.idempotency_key == key,
    )
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def private_reply_sent(
    session: AsyncSession, platform: str, page_id: str, comment_id: str
) -> bool:
    """Whether a private reply to this comment went out (or may have: UNKNOWN, PENDING)."""
    found = await session.execute(
        select(CommentAction.id)
        .where(
            CommentAction.platform == platform,
            CommentAction.page_id == page_id,
            CommentAction.comment_id == comment_id,
            CommentAction.action == "private_reply",
            CommentAction.state.in_(("ACCEPTED", "UNKNOWN", "PENDING")),
        )
        .limit(1)
    )
    return found.first() is not None


async def record(session: AsyncSession, action: CommentAction) -> None:
    session.add(action)


async def forget(session: AsyncSession, platform: str, page_id: str, key: str) -> None:
    row = await find(session, platform, page_id, key)
    if row is not None:
        await session.delete(row)


async def bump_thread(session: AsyncSession, thread_id: int, added: int, last_ms: int) -> None:
    """A comment the Page wrote through Pagewire: one more in its thread."""
    await session.execute(
        text(
            "UPDATE comment_threads SET comment_count = comment_count + :n,"
            " last_activity_ms = CASE WHEN last_activity_ms > :t THEN last_activity_ms ELSE :t END"
            " WHERE id = :id"
        ),
        {"n": added, "t": last_ms, "id": thread_id},
    )
