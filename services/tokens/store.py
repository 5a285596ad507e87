"""The tokens schema: one encrypted token per page, and its status."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pagewire.kit.db import upsert_insert


class Base(DeclarativeBase):
    """Metadata of the tokens schema alone."""


class PageToken(Base):
    """A page's token, sealed with AES-256-GCM; never plaintext."""

    __tablename__ = "page_tokens"
    __table_args__ = (
        CheckConstraint("status IN ('ACTIVE', 'REAUTH_REQUIRED')", name="page_tokens_status_check"),
        Index("page_tokens_key_id_idx", "key_id"),
    )

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    graph_code: Mapped[int] = mapped_column(Integer, default=0)
    graph_subcode: Mapped[int] = mapped_column(Integer, default=0)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)

    def __repr__(self) -> str:
        return (
            f"PageToken(platform={self.platform!r}, page_id={self.page_id!r},"
            f" key_id={self.key_id!r}, status={self.status!r})"
        )


async def upsert_token(
    session: AsyncSession,
    *,
    platform: str,
    page_id: str,
    key_id: str,
    nonce: bytes,
    ciphertext: bytes,
    expires_at_ms: int,
    now: int,
) -> None:
    """Inserts or replaces a page's token; a replaced token is ACTIVE again."""
    insert = upsert_insert(session.get_bind().dialect.name)
    fresh = {
        "key_id": key_id,
        "nonce": nonce,
        "ciphertext": ciphertext,
        "status": "ACTIVE",
        "reason": "",
        "graph_code": 0,
        "graph_subcode": 0,
        "expires_at_ms": expires_at_ms,
        "updated_at_ms": now,
    }
    stmt = insert(PageToken).values(platform=platform, page_id=page_id, created_at_ms=now, **fresh)
    stmt = stmt.on_conflict_do_update(index_elements=["platform", "page_id"], set_=fresh)
    await session.execute(stmt)


async def get_token(session: AsyncSession, platform: str, page_id: str) -> PageToken | None:
    return await session.get(PageToken, (platform, page_id))


async def delete_token(session: AsyncSession, platform: str, page_id: str) -> bool:
    result = await session.execute(
        delete(PageToken).where(PageToken.platform == platform, PageToken.page_id == page_id)
    )
    return bool(result.rowcount)


async def mark_invalid(
    session: AsyncSession,
    platform: str,
    page_id: str,
    *,
    reason: str,
    graph_code: int,
    graph_subcode: int,
    now: int,
) -> bool:
    result = await session.execute(
        update(PageToken)
        .where(PageToken.platform == platform, PageToken.page_id == page_id)
        .values(
            status="REAUTH_REQUIRED",
            reason=reason,
            graph_code=graph_code,
            graph_subcode=graph_subcode,
            updated_at_ms=now,
        )
    )
    return bool(result.rowcount)


async def key_ids_in_use(session: AsyncSession) -> list[str]:
    """Distinct key ids that seal stored tokens (a start-up check against the key ring)."""
    result = await session.execute(select(PageToken.key_id).distinct())
    return sorted(result.scalars())
