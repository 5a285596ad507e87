"""Fencing numbers for conversation locks, from the database so they survive a Redis restart.

A holder takes a number right after it acquires the lock (and checks it still
holds it), and every conversation write is refused when the conversation was
already written under a larger number: a holder whose lock expired while it
stalled cannot overwrite what a newer holder wrote (guarantee 5).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pagewire.kit.db import DB_UNAVAILABLE, unavailable


class StaleFence(Exception):
    """The conversation was written under a newer lock than this holder's."""

    def __init__(self, newer: int, mine: int) -> None:
        super().__init__(f"fence {mine} is older than the conversation's {newer}")
        self.newer = newer
        self.mine = mine


class Fences:
    """Strictly increasing numbers: a PostgreSQL sequence, or a counter table in SQLite."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def next(self) -> int:
        try:
            async with self._engine.connect() as conn:
                if self._postgres:
                    # nextval is not rolled back and never repeats, even across restarts.
                    return int(await conn.scalar(text("SELECT nextval('lock_fence_seq')")))
                number = int(
                    await conn.scalar(text("INSERT INTO lock_fences DEFAULT VALUES RETURNING id"))
                )
                await conn.execute(text("DELETE FROM lock_fences WHERE id < :n"), {"n": number})
                await conn.commit()
                return number
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
