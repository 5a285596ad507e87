"""The fencing numbers' source: a PostgreSQL sequence, or a counter table in SQLite."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def next_fence(engine: AsyncEngine) -> int:
    """A number larger than every one handed out before, even across restarts."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # nextval is not rolled back and never repeats.
            return int(await conn.scalar(text("SELECT nextval('lock_fence_seq')")))
        number = int(await conn.scalar(text("INSERT INTO lock_fences DEFAULT VALUES RETURNING id")))
        await conn.execute(text("DELETE FROM lock_fences WHERE id < :n"), {"n": number})
        await conn.commit()
        return number
