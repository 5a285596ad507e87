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


# ---- history imports ---------------------------------------------------------------------

PENDING, RUNNING, DONE, FAILED = "PENDING", "RUNNING", "DONE", "FAILED"


class HistoryImport(Base):
    """A page's history import: its window, how far it got, and who is running it.

    The cursor of the conversation list and every counter are written in the transaction
    that records the result page they come from, after the router has committed that
    page's events: a process killed at any point resumes from the last recorded page,
    and the router's log drops what it appends twice. The lease says which replica runs
    it; a write from a replica whose lease was taken over changes nothing.
    """

    __tablename__ = "history_imports"
    __table_args__ = (
        CheckConstraint(
            "state IN ('PENDING', 'RUNNING', 'DONE', 'FAILED')", name="history_imports_state_check"
        ),
        Index("history_imports_due_idx", "state", "lease_until_ms"),
    )

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    days: Mapped[int] = mapped_column(Integer)
    since_ms: Mapped[int] = mapped_column(BigInteger)
    # The conversation list: the cursor of its next result page, and whether it ended.
    list_cursor: Mapped[str] = mapped_column(Text, default="")
    listed: Mapped[bool] = mapped_column(Boolean, default=False)
    conversations_total: Mapped[int] = mapped_column(Integer, default=0)
    conversations_done: Mapped[int] = mapped_column(Integer, default=0)
    messages_read: Mapped[int] = mapped_column(Integer, default=0)
    messages_stored: Mapped[int] = mapped_column(Integer, default=0)
    graph_calls: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    error_code: Mapped[int] = mapped_column(Integer, default=0)
    requested_at_ms: Mapped[int] = mapped_column(BigInteger)
    started_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    finished_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger)
    lease_owner: Mapped[str] = mapped_column(String(64), default="")
    lease_until_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class HistoryConversation(Base):
    """One conversation an import found, in the order Graph listed it, and how far its
    messages were read (the cursor of the next result page)."""

    __tablename__ = "history_conversations"
    __table_args__ = (
        Index("history_conversations_next_idx", "platform", "page_id", "done", "position"),
    )

    platform: Mapped[str] = mapped_column(String(16), primary_key=True)
    page_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str] = mapped_column(String(128), default="")
    user_name: Mapped[str] = mapped_column(Text, default="")
    updated_time_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    cursor: Mapped[str] = mapped_column(Text, default="")
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    messages_read: Mapped[int] = mapped_column(Integer, default=0)
    messages_stored: Mapped[int] = mapped_column(Integer, default=0)
    # The newest message's mid (Graph lists newest first): names this run's marker.
    newest_mid: Mapped[str] = mapped_column(Text, default="")


@dataclass(frozen=True)
class Listed:
    """A conversation as the conversation list gave it."""

    conversation_id: str
    user_id: str
    user_name: str
    updated_time_ms: int


async def request_history(
    session: AsyncSession,
    platform: str,
    page_id: str,
    *,
    days: int,
    since_ms: int,
    now: int,
    restart: bool,
    keep_finished: bool = False,
) -> HistoryImport:
    """Asks for the page's import. A pending or running one goes on as it is (unless
    `restart`); a failed one resumes where it stopped; a finished one starts again (what
    it finds again the router's log drops, so only what is new is stored) unless
    `keep_finished` (a page connected again)."""
    row = await session.get(HistoryImport, (platform, page_id), with_for_update=True)
    if row is not None and not restart and row.state in (PENDING, RUNNING):
        return row
    if row is not None and keep_finished and row.state == DONE:
        return row
    if row is not None and not restart and row.state == FAILED:
        row.state, row.error, row.error_code, row.updated_at_ms = PENDING, "", 0, now
        row.requested_at_ms = now
        return row
    await session.execute(
        delete(HistoryConversation).where(
            HistoryConversation.platform == platform, HistoryConversation.page_id == page_id
        )
    )
    if row is None:
        row = HistoryImport(platform=platform, page_id=page_id)
        session.add(row)
    row.state, row.days, row.since_ms = PENDING, days, since_ms
    row.list_cursor, row.listed = "", False
    row.conversations_total = row.conversations_done = 0
    row.messages_read = row.messages_stored = row.graph_calls = 0
    row.error, row.error_code = "", 0
    row.requested_at_ms = row.updated_at_ms = now
    row.started_at_ms = row.finished_at_ms = 0
    row.lease_owner, row.lease_until_ms = "", 0
    return row


async def get_history(session: AsyncSession, platform: str, page_id: str) -> HistoryImport | None:
    return await session.get(HistoryImport, (platform, page_id))


async def histories(
    session: AsyncSession, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], HistoryImport]:
    """The imports of these pages, by (platform, page id); pages with none are left out."""
    if not keys:
        return {}
    pages = {page_id for _, page_id in keys}
    rows = await session.execute(select(HistoryImport).where(HistoryImport.page_id.in_(pages)))
    wanted = set(keys)
    return {
        (row.platform, row.page_id): row
        for row in rows.scalars()
        if (row.platform, row.page_id) in wanted
    }


async def due_histories(session: AsyncSession, now: int, limit: int) -> list[tuple[str, str, int]]:
    """(platform, page id, lease_until_ms) of imports to run: pending or running, with no
    live lease (a replica that died mid-import left its lease to run out)."""
    rows = await session.execute(
        select(HistoryImport.platform, HistoryImport.page_id, HistoryImport.lease_until_ms)
        .where(HistoryImport.state.in_((PENDING, RUNNING)), HistoryImport.lease_until_ms < now)
        .order_by(HistoryImport.requested_at_ms)
        .limit(limit)
    )
    return [tuple(row) for row in rows.all()]


async def claim_history(
    session: AsyncSession,
    platform: str,
    page_id: str,
    *,
    seen_lease_until_ms: int,
    owner: str,
    now: int,
    lease_ms: int,
) -> bool:
    """Takes the import for `owner` unless another replica took it first (compare-and-set
    on the lease it saw)."""
    result = await session.execute(
        update(HistoryImport)
        .where(
            HistoryImport.platform == platform,
            HistoryImport.page_id == page_id,
            HistoryImport.state.in_((PENDING, RUNNING)),
            HistoryImport.lease_until_ms == seen_lease_until_ms,
        )
        .values(
            state=RUNNING,
            lease_owner=owner,
            lease_until_ms=now + lease_ms,
            updated_at_ms=now,
            started_at_ms=func.coalesce(func.nullif(HistoryImport.started_at_ms, 0), now),
        )
    )
    return bool(result.rowcount)


def _owned(platform: str, page_id: str, owner: str):  # type: ignore[no-untyped-def]
    return update(HistoryImport).where(
        HistoryImport.platform == platform,
        HistoryImport.page_id == page_id,
        HistoryImport.lease_owner == owner,
        HistoryImport.state == RUNNING,
    )


async def record_listing(
    session: AsyncSession,
    platform: str,
    page_id: str,
    owner: str,
    *,
    found: Sequence[Listed],
    cursor: str,
    listed: bool,
    now: int,
    lease_ms: int,
) -> bool:
    """Records one result page of the conversation list; False (nothing written) when
    `owner` no longer runs the import."""
    result = await session.execute(
        _owned(platform, page_id, owner).values(
            list_cursor=cursor,
            listed=listed,
            graph_calls=HistoryImport.graph_calls + 1,
            updated_at_ms=now,
            lease_until_ms=now + lease_ms,
        )
    )
    if not result.rowcount:
        return False
    if found:
        position = (
            await session.execute(
                select(func.count())
                .select_from(HistoryConversation)
                .where(
                    HistoryConversation.platform == platform,
                    HistoryConversation.page_id == page_id,
                )
            )
        ).scalar_one()
        insert = upsert_insert(session.get_bind().dialect.name)
        stmt = insert(HistoryConversation).values(
            [
                {
                    "platform": platform,
                    "page_id": page_id,
                    "conversation_id": item.conversation_id,
                    "position": position + i,
                    "user_id": item.user_id,
                    "user_name": item.user_name,
                    "updated_time_ms": item.updated_time_ms,
                }
                for i, item in enumerate(found)
            ]
        )
        # A conversation listed again (it moved up the list while we paged) is read once.
        inserted = await session.execute(
            stmt.on_conflict_do_nothing(
                index_elements=["platform", "page_id", "conversation_id"]
            ).returning(HistoryConversation.conversation_id)
        )
        added = len(inserted.all())
        await session.execute(
            _owned(platform, page_id, owner).values(
                conversations_total=HistoryImport.conversations_total + added
            )
        )
    return True


async def next_conversation(
    session: AsyncSession, platform: str, page_id: str
) -> HistoryConversation | None:
    """The first conversation, in list order, whose messages are not all read."""
    return (
        await session.execute(
            select(HistoryConversation)
            .where(
                HistoryConversation.platform == platform,
                HistoryConversation.page_id == page_id,
                HistoryConversation.done.is_(False),
            )
            .order_by(HistoryConversation.position)
            .limit(1)
        )
    ).scalar_one_or_none()


async def record_messages(
    session: AsyncSession,
    platform: str,
    page_id: str,
    owner: str,
    conversation_id: str,
    *,
    cursor: str,
    done: bool,
    read: int,
    stored: int,
    newest_mid: str,
    now: int,
    lease_ms: int,
) -> bool:
    """Records one result page of a conversation's messages (after the router committed
    them); False when `owner` no longer runs the import."""
    result = await session.execute(
        _owned(platform, page_id, owner).values(
            messages_read=HistoryImport.messages_read + read,
            messages_stored=HistoryImport.messages_stored + stored,
            conversations_done=HistoryImport.conversations_done + (1 if done else 0),
            graph_calls=HistoryImport.graph_calls + 1,
            error="",
            error_code=0,
            updated_at_ms=now,
            lease_until_ms=now + lease_ms,
        )
    )
    if not result.rowcount:
        return False
    changes: dict[str, object] = {
        "cursor": cursor,
        "done": done,
        "messages_read": HistoryConversation.messages_read + read,
        "messages_stored": HistoryConversation.messages_stored + stored,
    }
    if newest_mid:
        changes["newest_mid"] = newest_mid
    await session.execute(
        update(HistoryConversation)
        .where(
            HistoryConversation.platform == platform,
            HistoryConversation.page_id == page_id,
            HistoryConversation.conversation_id == conversation_id,
        )
        .values(**changes)
    )
    return True


async def note_history_wait(
    session: AsyncSession,
    platform: str,
    page_id: str,
    owner: str,
    *,
    error: str,
    code: int,
    now: int,
    lease_ms: int,
) -> bool:
    """Records the Graph error the import is waiting out (rate limit, outage)."""
    result = await session.execute(
        _owned(platform, page_id, owner).values(
            error=error[:500], error_code=code, updated_at_ms=now, lease_until_ms=now + lease_ms
        )
    )
    return bool(result.rowcount)


async def end_history(
    session: AsyncSession,
    platform: str,
    page_id: str,
    owner: str,
    *,
    state: str,
    now: int,
    error: str = "",
    code: int = 0,
) -> bool:
    """DONE, or FAILED with the Graph error; the lease is given up."""
    values: dict[str, object] = {
        "state": state,
        "finished_at_ms": now,
        "updated_at_ms": now,
        "lease_owner": "",
        "lease_until_ms": 0,
    }
    if state == FAILED:
        values.update(error=error[:500], error_code=code)
    result = await session.execute(_owned(platform, page_id, owner).values(**values))
    return bool(result.rowcount)


async def release_history(
    session: AsyncSession, platform: str, page_id: str, owner: str, now: int
) -> None:
    """Gives the lease up without ending the import (this process is stopping): another
    replica, or this one restarted, takes it at once."""
    await session.execute(
        _owned(platform, page_id, owner).values(lease_owner="", lease_until_ms=0, updated_at_ms=now)
    )


async def forget_history(session: AsyncSession, platform: str, page_id: str) -> None:
    """A disconnected page's import and its cursors go with it."""
    for model in (HistoryConversation, HistoryImport):
        await session.execute(
            delete(model).where(model.platform == platform, model.page_id == page_id)
        )
