"""The tokens schema: sealed page tokens, the vault's primary key id, retired keys, the audit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pagewire.kit.db import upsert_insert

BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Metadata of the tokens schema alone."""


class PageToken(Base):
    """A page's token, sealed (services.tokens.sealing); never plaintext.

    `key_id` and `format` repeat what the envelope says, so rotation can find the
    rows still on an old key with an index; opening checks that they agree.
    """

    __tablename__ = "page_tokens"
    __table_args__ = (
        CheckConstraint("status IN ('ACTIVE', 'REAUTH_REQUIRED')", name="page_tokens_status_check"),
        Index("page_tokens_key_id_idx", "key_id"),
    )

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    format: Mapped[int] = mapped_column(Integer)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
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
            f" key_id={self.key_id!r}, format={self.format!r}, status={self.status!r})"
        )


class KeyRingState(Base):
    """One row: the vault's primary key id (NULL until the first rotation: the ring's own)."""

    __tablename__ = "key_ring_state"
    __table_args__ = (CheckConstraint("id = 1", name="key_ring_state_single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    primary_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
    updated_by: Mapped[str] = mapped_column(String(128))


class RetiredKey(Base):
    """A key id retired by RemoveKey: nothing used it then, nothing may use it again."""

    __tablename__ = "retired_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    retired_at_ms: Mapped[int] = mapped_column(BigInteger)
    retired_by: Mapped[str] = mapped_column(String(128))


class AuditRecord(Base):
    """Who did what to which page's token, when, and how it ended; never the token."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("audit_log_page_idx", "page_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    caller: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    platform: Mapped[str] = mapped_column(String(16), default="")
    page_id: Mapped[str] = mapped_column(String(32), default="")
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    # The identity a service decrypted for (the reader or sender whose call caused it).
    on_behalf_of: Mapped[str] = mapped_column(String(128), default="")


# --- page tokens ----------------------------------------------------------------------------


async def upsert_token(
    session: AsyncSession,
    *,
    platform: str,
    page_id: str,
    key_id: str,
    format: int,
    sealed: bytes,
    expires_at_ms: int,
    now: int,
) -> None:
    """Inserts or replaces a page's token; a replaced token is ACTIVE again."""
    insert = upsert_insert(session.get_bind().dialect.name)
    fresh = {
        "key_id": key_id,
        "format": format,
        "sealed": sealed,
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


async def usage(session: AsyncSession) -> dict[tuple[str, int], int]:
    """(key id, format) → number of stored tokens."""
    result = await session.execute(
        select(PageToken.key_id, PageToken.format, func.count()).group_by(
            PageToken.key_id, PageToken.format
        )
    )
    return {(key_id, fmt): count for key_id, fmt, count in result.all()}


async def count_with_key(session: AsyncSession, key_id: str) -> int:
    result = await session.execute(
        select(func.count()).select_from(PageToken).where(PageToken.key_id == key_id)
    )
    return int(result.scalar_one())


@dataclass(frozen=True)
class StaleRow:
    """A row to rewrap; `sealed` is ciphertext, not the token."""

    platform: str
    page_id: str
    key_id: str
    format: int
    sealed: bytes


def _stale(primary: str, current_format: int):  # type: ignore[no-untyped-def]
    return or_(PageToken.key_id != primary, PageToken.format != current_format)


async def stale_batch(
    session: AsyncSession,
    *,
    primary: str,
    current_format: int,
    after: tuple[str, str] | None,
    limit: int,
) -> list[StaleRow]:
    """The next rows (in key order after `after`) not sealed with `primary` in the current
    format, locked until the transaction ends so a concurrent put waits for the rewrap."""
    stmt = select(
        PageToken.platform, PageToken.page_id, PageToken.key_id, PageToken.format, PageToken.sealed
    ).where(_stale(primary, current_format))
    if after is not None:
        stmt = stmt.where(tuple_(PageToken.platform, PageToken.page_id) > tuple_(*after))
    stmt = stmt.order_by(PageToken.platform, PageToken.page_id).limit(limit).with_for_update()
    result = await session.execute(stmt)
    return [StaleRow(*row) for row in result.all()]


async def count_stale(session: AsyncSession, primary: str, current_format: int) -> int:
    result = await session.execute(
        select(func.count()).select_from(PageToken).where(_stale(primary, current_format))
    )
    return int(result.scalar_one())


async def rewrap(session: AsyncSession, rows: Sequence[dict[str, object]]) -> None:
    """Stores new envelopes: dicts of platform, page_id, key_id, format, sealed."""
    if rows:
        await session.execute(update(PageToken), list(rows))


# --- the key ring's state -------------------------------------------------------------------


async def primary_key_id(session: AsyncSession, *, lock: str | None = None) -> str | None:
    """The primary recorded by the last rotation (None: the key ring's own).

    lock="share": puts and rewrap batches hold it so a rotation waits for them and
    they see the new primary once the rotation committed; lock="update": rotations.
    """
    stmt = select(KeyRingState.primary_key_id).where(KeyRingState.id == 1)
    if lock == "share":
        stmt = stmt.with_for_update(read=True)
    elif lock == "update":
        stmt = stmt.with_for_update()
    result = await session.execute(stmt)
    return result.scalar_one_or_none()


async def set_primary(session: AsyncSession, key_id: str, caller: str, now: int) -> None:
    insert = upsert_insert(session.get_bind().dialect.name)
    values = {"primary_key_id": key_id, "updated_at_ms": now, "updated_by": caller}
    stmt = insert(KeyRingState).values(id=1, **values)
    await session.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))


async def retired(session: AsyncSession) -> dict[str, int]:
    """Retired key id → when (ms)."""
    result = await session.execute(select(RetiredKey.key_id, RetiredKey.retired_at_ms))
    return dict(result.tuples().all())


async def retire(session: AsyncSession, key_id: str, caller: str, now: int) -> None:
    insert = upsert_insert(session.get_bind().dialect.name)
    stmt = insert(RetiredKey).values(key_id=key_id, retired_at_ms=now, retired_by=caller)
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["key_id"]))


# --- audit ----------------------------------------------------------------------------------


async def add_audit(
    session: AsyncSession,
    *,
    caller: str,
    action: str,
    platform: str,
    page_id: str,
    outcome: str,
    detail: str,
    now: int,
    on_behalf_of: str = "",
) -> None:
    await session.execute(
        insert(AuditRecord).values(
            on_behalf_of=on_behalf_of[:128],
            at_ms=now,
            caller=caller[:128],
            action=action,
            platform=platform,
            page_id=page_id,
            outcome=outcome[:32],
            detail=detail[:1000],
        )
    )


async def list_audit(
    session: AsyncSession, *, platform: str, page_id: str, before_id: int, limit: int
) -> list[AuditRecord]:
    stmt = select(AuditRecord)
    if platform:
        stmt = stmt.where(AuditRecord.platform == platform)
    if page_id:
        stmt = stmt.where(AuditRecord.page_id == page_id)
    if before_id:
        stmt = stmt.where(AuditRecord.id < before_id)
    result = await session.execute(stmt.order_by(AuditRecord.id.desc()).limit(limit))
    return list(result.scalars())


async def count_by_status(session: AsyncSession) -> dict[tuple[str, str], int]:
    """How many tokens each (platform, status) has: ACTIVE or REAUTH_REQUIRED."""
    rows = await session.execute(
        select(PageToken.platform, PageToken.status, func.count()).group_by(
            PageToken.platform, PageToken.status
        )
    )
    return {(platform, status): count for platform, status, count in rows}
