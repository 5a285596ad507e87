"""The subscriptions schema: one connection per page, owned by one account, and its checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Index,
    Integer,
    String,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pagewire.kit.db import upsert_insert

SUBSCRIBED = "SUBSCRIBED"
SUBSCRIBE_FAILED = "SUBSCRIBE_FAILED"
REAUTH_REQUIRED = "REAUTH_REQUIRED"


class Base(DeclarativeBase):
    """Metadata of the subscriptions schema alone."""


class PageConnection(Base):
    """A connected page: whose it is, what is subscribed, and how the last attempt went."""

    __tablename__ = "page_connections"
    __table_args__ = (
        CheckConstraint(
            "status IN ('SUBSCRIBED', 'SUBSCRIBE_FAILED', 'REAUTH_REQUIRED')",
            name="page_connections_status_check",
        ),
        Index("page_connections_account_idx", "account_id", "platform", "page_id"),
        Index("page_connections_checked_idx", "last_checked_at_ms"),
    )

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    # Comma-joined: field names are [a-z0-9_], and the list is only ever read whole.
    subscribed_fields: Mapped[str] = mapped_column(Text)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_error_code: Mapped[int] = mapped_column(Integer, default=0)
    last_error_subcode: Mapped[int] = mapped_column(Integer, default=0)
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
    last_checked_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    repairs: Mapped[int] = mapped_column(Integer, default=0)
    last_repair: Mapped[str] = mapped_column(Text, default="")
    last_repair_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    human_agent: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def fields(self) -> list[str]:
        return [name for name in self.subscribed_fields.split(",") if name]


class RouterNotice(Base):
    """What the router must be told of a page: its account ('' once disconnected), under a
    version one more at every change, until the router has taken that version.

    Written in the transaction that changes the connection, so a notice cannot be lost
    between the change and the call (the router down, the call timed out, this process
    killed); delivered at once and retried until it is. One row per page ever connected.
    """

    __tablename__ = "router_notices"
    __table_args__ = (Index("router_notices_due_idx", "next_at_ms"),)

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(BigInteger)
    delivered_version: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next attempt is due; 0 once delivered.
    next_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


@dataclass(frozen=True)
class Notice:
    """A notice to deliver: the page, its account ('' disconnected), its version."""

    platform: str
    page_id: str
    account_id: str
    version: int


@dataclass(frozen=True)
class Outcome:
    """How a subscription attempt ended, as stored on the connection."""

    status: str
    last_error: str = ""
    last_error_code: int = 0
    last_error_subcode: int = 0


async def get(session: AsyncSession, platform: str, page_id: str) -> PageConnection | None:
    return await session.get(PageConnection, (platform, page_id))


async def list_pages(
    session: AsyncSession, account_id: str = "", platform: str = "", page_id: str = ""
) -> list[PageConnection]:
    """Connections ordered by account, platform, page id; each filter applies when given."""
    query = select(PageConnection).order_by(
        PageConnection.account_id, PageConnection.platform, PageConnection.page_id
    )
    if account_id:
        query = query.where(PageConnection.account_id == account_id)
    if platform:
        query = query.where(PageConnection.platform == platform)
    if page_id:
        query = query.where(PageConnection.page_id == page_id)
    return list((await session.execute(query)).scalars())


async def due_for_check(session: AsyncSession, checked_before_ms: int, limit: int) -> list[tuple]:
    """(platform, page id, last_checked_at_ms) of pages not checked since `checked_before_ms`."""
    query = (
        select(PageConnection.platform, PageConnection.page_id, PageConnection.last_checked_at_ms)
        .where(PageConnection.last_checked_at_ms < checked_before_ms)
        .order_by(
            PageConnection.last_checked_at_ms, PageConnection.platform, PageConnection.page_id
        )
        .limit(limit)
    )
    return [tuple(row) for row in (await session.execute(query)).all()]


async def claim_check(
    session: AsyncSession, platform: str, page_id: str, seen_checked_at_ms: int, now: int
) -> bool:
    """Marks the page as being checked unless another replica claimed it first.

    Compare-and-set on last_checked_at_ms: of two replicas that saw the same
    value, only one update matches, so a page is checked once per period.
    """
    result = await session.execute(
        update(PageConnection)
        .where(
            PageConnection.platform == platform,
            PageConnection.page_id == page_id,
            PageConnection.last_checked_at_ms == seen_checked_at_ms,
        )
        .values(last_checked_at_ms=now)
    )
    return bool(result.rowcount)


async def record_check(
    session: AsyncSession,
    platform: str,
    page_id: str,
    *,
    now: int,
    outcome: Outcome | None,
    repair: str = "",
) -> PageConnection | None:
    """Stores a check's result: when, the new status (if any), and a repair (if any)."""
    connection = await session.get(PageConnection, (platform, page_id), with_for_update=True)
    if connection is None:
        return None
    connection.last_checked_at_ms = now
    if outcome is not None and (
        outcome.status != connection.status
        or outcome.last_error != connection.last_error
        or outcome.last_error_code != connection.last_error_code
        or outcome.last_error_subcode != connection.last_error_subcode
    ):
        connection.status = outcome.status
        connection.last_error = outcome.last_error
        connection.last_error_code = outcome.last_error_code
        connection.last_error_subcode = outcome.last_error_subcode
        connection.updated_at_ms = now
    if repair:
        connection.repairs += 1
        connection.last_repair = repair
        connection.last_repair_at_ms = now
        connection.updated_at_ms = now
    return connection


async def save_connection(
    session: AsyncSession,
    *,
    platform: str,
    page_id: str,
    account_id: str,
    fields: Sequence[str],
    outcome: Outcome,
    allow_move: bool,
    now: int,
    human_agent: bool = False,
) -> str | None:
    """Inserts or updates the connection; returns None when it belongs to another account.

    The ownership check is part of the upsert (ON CONFLICT … WHERE), so two
    concurrent connects for different accounts cannot both win.
    """
    insert = upsert_insert(session.get_bind().dialect.name)
    changes = {
        "account_id": account_id,
        "status": outcome.status,
        "subscribed_fields": ",".join(fields),
        "last_error": outcome.last_error,
        "last_error_code": outcome.last_error_code,
        "last_error_subcode": outcome.last_error_subcode,
        "updated_at_ms": now,
        "human_agent": human_agent,
    }
    stmt = insert(PageConnection).values(
        platform=platform, page_id=page_id, created_at_ms=now, **changes
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["platform", "page_id"],
        set_=changes,
        where=None if allow_move else PageConnection.account_id == account_id,
    ).returning(PageConnection.account_id)
    row = (await session.execute(stmt)).first()
    return None if row is None else row[0]


async def set_outcome(
    session: AsyncSession, platform: str, page_id: str, outcome: Outcome, now: int
) -> PageConnection | None:
    """Records a resubscription's result on an existing connection."""
    connection = await session.get(PageConnection, (platform, page_id), with_for_update=True)
    if connection is None:
        return None
    connection.status = outcome.status
    connection.last_error = outcome.last_error
    connection.last_error_code = outcome.last_error_code
    connection.last_error_subcode = outcome.last_error_subcode
    connection.updated_at_ms = now
    return connection


async def delete_connection(session: AsyncSession, platform: str, page_id: str) -> bool:
    result = await session.execute(
        delete(PageConnection).where(
            PageConnection.platform == platform, PageConnection.page_id == page_id
        )
    )
    return bool(result.rowcount)


async def count_by_status(session: AsyncSession) -> dict[tuple[str, str], int]:
    """How many pages each (platform, status) has (SUBSCRIBED, SUBSCRIBE_FAILED, …)."""
    rows = await session.execute(
        select(PageConnection.platform, PageConnection.status, func.count()).group_by(
            PageConnection.platform, PageConnection.status
        )
    )
    return {(platform, status): count for platform, status, count in rows}


async def note_for_router(
    session: AsyncSession, platform: str, page_id: str, account_id: str, now: int
) -> Notice:
    """Records, in the caller's transaction, that the router must learn the page's account
    ('' : disconnected); the notice's version is one more than the page's last."""
    insert = upsert_insert(session.get_bind().dialect.name)
    stmt = insert(RouterNotice).values(
        platform=platform,
        page_id=page_id,
        account_id=account_id,
        version=1,
        delivered_version=0,
        attempts=0,
        next_at_ms=now,
        last_error="",
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["platform", "page_id"],
        set_={
            "account_id": account_id,
            "version": RouterNotice.version + 1,
            "attempts": 0,
            "next_at_ms": now,
            "last_error": "",
        },
    ).returning(RouterNotice.version)
    version = (await session.execute(stmt)).scalar_one()
    return Notice(platform, page_id, account_id, version)


async def due_notices(session: AsyncSession, now: int, limit: int) -> list[Notice]:
    """Notices the router has not taken yet whose next attempt is due, oldest due first."""
    rows = await session.execute(
        select(
            RouterNotice.platform,
            RouterNotice.page_id,
            RouterNotice.account_id,
            RouterNotice.version,
        )
        .where(
            RouterNotice.delivered_version < RouterNotice.version,
            RouterNotice.next_at_ms <= now,
        )
        .order_by(RouterNotice.next_at_ms)
        .limit(limit)
    )
    return [Notice(*row) for row in rows]


async def notice_delivered(session: AsyncSession, notice: Notice) -> None:
    """The router took `notice` (or a newer one was already there)."""
    await session.execute(
        update(RouterNotice)
        .where(
            RouterNotice.platform == notice.platform,
            RouterNotice.page_id == notice.page_id,
            RouterNotice.delivered_version < notice.version,
        )
        .values(
            delivered_version=notice.version,
            attempts=0,
            last_error="",
            next_at_ms=0,
        )
    )


async def notice_failed(
    session: AsyncSession, notice: Notice, now: int, delay_ms: Callable[[int], int], error: str
) -> int:
    """Counts a failed delivery of `notice` and schedules the next one `delay_ms(attempts)`
    from now; the attempts so far (0: a newer notice was written meanwhile, and keeps its
    own schedule)."""
    row = await session.get(RouterNotice, (notice.platform, notice.page_id), with_for_update=True)
    if row is None or row.version != notice.version or row.delivered_version >= row.version:
        return 0
    row.attempts += 1
    row.next_at_ms = now + delay_ms(row.attempts)
    row.last_error = error[:500]
    return row.attempts


async def undelivered_notices(session: AsyncSession) -> int:
    """How many pages' latest notice the router has not taken yet."""
    return (
        await session.execute(
            select(func.count())
            .select_from(RouterNotice)
            .where(RouterNotice.delivered_version < RouterNotice.version)
        )
    ).scalar_one()
