"""Statements on contacts' profiles (name, picture, username) fetched from Graph."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.router.store.models import Contact


def _where(platform: str, page_id: str, user_id: str):  # type: ignore[no-untyped-def]
    return (Contact.platform == platform, Contact.page_id == page_id, Contact.user_id == user_id)


async def checked_at(
    session: AsyncSession, platform: str, page_id: str, user_id: str
) -> int | None:
    """When the contact's profile was last asked for; None when there is no such contact."""
    return (
        await session.execute(
            select(Contact.profile_checked_at_ms).where(*_where(platform, page_id, user_id))
        )
    ).scalar_one_or_none()


async def store(
    session: AsyncSession, platform: str, page_id: str, user_id: str, values: dict[str, Any]
) -> None:
    await session.execute(
        update(Contact).where(*_where(platform, page_id, user_id)).values(**values)
    )
