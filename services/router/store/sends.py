"""Statements of the outbound path: the send record, written before Graph is called, and
its outcome (the messages themselves go through state.insert_messages, like every other)."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store.models import Message, OutboundSend


async def find(
    session: AsyncSession, platform: str, page_id: str, key: str, *, lock: bool = False
) -> OutboundSend | None:
    query = select(OutboundSend).where(
        OutboundSend.platform == platform,
        OutboundSend.page_id == page_id,
        OutboundSend.idempotency_key == key,
    )
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def message_ids(session: AsyncSession, conversation_id: int, key: str) -> list[int]:
    """The outgoing messages a send with this key stored, in order."""
    rows = await session.execute(
        select(Message.id)
        .where(Message.conversation_id == conversation_id, Message.idempotency_key == key)
        .order_by(Message.id)
    )
    return list(rows.scalars())


async def echoed_mids(session: AsyncSession, conversation_id: int, marker: str) -> list[str]:
    """Mids of echoes carrying a send's metadata marker: proof Meta took it."""
    rows = await session.execute(
        select(Message.mid).where(
            Message.conversation_id == conversation_id,
            Message.direction == "OUTBOUND",
            Message.metadata_ == marker,
        )
    )
    return list(rows.scalars())


async def record_pending(session: AsyncSession, send: OutboundSend) -> None:
    session.add(send)


async def forget(session: AsyncSession, platform: str, page_id: str, key: str) -> None:
    row = await find(session, platform, page_id, key)
    if row is not None:
        await session.delete(row)


async def count_sent(
    session: AsyncSession, conversation_id: int, added: int, last_event_ms: int
) -> str:
    """Adds a send's new messages to its conversation; returns the conversation's account."""
    row = (
        await session.execute(
            text(
                "UPDATE conversations SET message_count = message_count + :n,"
                " last_event_ms = CASE WHEN last_event_ms > :t THEN last_event_ms ELSE :t END"
                " WHERE id = :id RETURNING account_id"
            ),
            {"n": added, "t": last_event_ms, "id": conversation_id},
        )
    ).one()
    return str(row[0])
