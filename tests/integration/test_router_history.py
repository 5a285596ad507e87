"""History import and gap repair in the router, over real gRPC, PostgreSQL and Redis: old
messages stored once and quietly, one HISTORY_IMPORTED per conversation, gap repair's
messages announced, the origin each caller may append (over mutual TLS), and migration
0009 on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg
import pytest
from alembic import command
from sqlalchemy import select, update

from pagewire import contract
from pagewire.kit import migrate
from pagewire.kit.authz import Policy
from pagewire.kit.grpcserver import start_server
from pagewire.kit.tls import IDENTITIES, DevPki, generate_pki
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from services.router.access import ROUTER_ACCESS, access_settings
from services.router.server import SERVICE_NAME
from services.router.store import Contact, EventLog, Message
from services.router.store.models import AccountCursor
from tests.support.routerharness import PAGE, USER, RouterHarness, router_harness
from tests.support.waiting import connected

IG_PAGE = "17841400000000001"
IG_USER = "1122334455667788"
HISTORY, GAP_REPAIR, WEBHOOK = (
    events_pb2.ORIGIN_HISTORY,
    events_pb2.ORIGIN_GAP_REPAIR,
    events_pb2.ORIGIN_WEBHOOK,
)


@pytest.fixture
async def harness(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    async with router_harness(database_url, redis_url, redis_prefix) as running:
        running.subscriptions.connect(PAGE, "acme")
        running.subscriptions.connect(IG_PAGE, "acme", platform=events_pb2.INSTAGRAM)
        yield running


def message(
    mid: str,
    text: str,
    ts: int,
    *,
    origin: int = WEBHOOK,
    from_page: bool = False,
    user: str = USER,
    echo: bool = False,
) -> events_pb2.Event:
    """A message as the gateway (webhook) or the importer (history, gap repair) builds it:
    the Page's own messages read from Graph are OUTBOUND and not echoes."""
    return events_pb2.Event(
        id=mid,
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        user_id=user,
        direction=events_pb2.OUTBOUND if from_page or echo else events_pb2.INBOUND,
        timestamp_ms=ts,
        raw_json="{}",
        origin=origin,
        message=events_pb2.MessageEvent(mid=mid, text=text, is_echo=echo),
    )


def marker(
    conversation_id: str,
    messages: int,
    user_name: str,
    updated_ms: int,
    *,
    platform: int = events_pb2.FACEBOOK,
    page: str = PAGE,
    user: str = USER,
    origin: int = HISTORY,
) -> events_pb2.Event:
    """The end of one conversation's import, with an id digested as the importer does."""
    digest = hashlib.sha256(f"{page}:{conversation_id}:{updated_ms}".encode()).hexdigest()
    return events_pb2.Event(
        id=f"history:{digest[:40]}",
        platform=platform,
        page_id=page,
        user_id=user,
        direction=events_pb2.INBOUND,
        timestamp_ms=updated_ms,
        raw_json="{}",
        origin=origin,
        history=events_pb2.HistoryEvent(
            conversation_id=conversation_id,
            messages=messages,
            user_name=user_name,
            updated_time_ms=updated_ms,
        ),
    )


def ingest(*events: events_pb2.Event) -> router_pb2.IngestRequest:
    return router_pb2.IngestRequest(events=list(events))


async def feed(harness: RouterHarness, account: str = "acme") -> list[router_pb2.Change]:
    """Every change of the account's feed so far, read through StreamEvents."""
    async with harness.sessions() as session:
        last = (
            await session.execute(
                select(AccountCursor.last_cursor).where(AccountCursor.account_id == account)
            )
        ).scalar_one_or_none()
    if not last:
        return []
    changes: list[router_pb2.Change] = []
    call = harness.stub.StreamEvents(
        router_pb2.StreamEventsRequest(account_id=account, after_cursor=0), timeout=10
    )
    async for change in call:
        changes.append(change)
        if change.cursor >= last:
            break
    call.cancel()
    return changes


def kinds(changes: list[router_pb2.Change]) -> list[str]:
    return [router_pb2.ChangeKind.Name(c.kind) for c in changes]


async def conversation(harness: RouterHarness, page: str = PAGE) -> router_pb2.Conversation:
    listed = await harness.stub.ListConversations(router_pb2.ListConversationsRequest(page_id=page))
    (found,) = listed.conversations
    return found


async def messages(harness: RouterHarness, page: str = PAGE) -> list[router_pb2.Message]:
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=page))
    return list(listed.messages)


async def test_history_is_stored_in_order_without_a_change_per_message(
    harness: RouterHarness,
) -> None:
    # Graph lists a conversation's messages newest first; the marker comes last.
    reply = await harness.ingest(
        ingest(
            message("m_h3", "¿Siguen abiertos?", 3000, origin=HISTORY),
            message("m_h2", "Hola, ¿en qué te ayudamos?", 2000, origin=HISTORY, from_page=True),
            message("m_h1", "Hola", 1000, origin=HISTORY),
            marker("t_10161234567890", 3, "Lucía Fernández", 9000),
        )
    )
    assert (reply.stored, reply.duplicates) == (4, 0)
    stored = await messages(harness)
    assert [(m.mid, events_pb2.Direction.Name(m.direction)) for m in stored] == [
        ("m_h1", "INBOUND"),
        ("m_h2", "OUTBOUND"),
        ("m_h3", "INBOUND"),
    ]
    assert {m.origin for m in stored} == {HISTORY}
    assert not any(m.is_echo for m in stored)
    conv = await conversation(harness)
    assert conv.message_count == 3
    # The marker is not a message: its time (the conversation's updated_time) neither moves
    # the conversation's last event nor opens the messaging window.
    assert (conv.last_event_ms, conv.last_inbound_ms) == (3000, 3000)
    assert conv.contact.name == "Lucía Fernández"

    changes = await feed(harness)
    assert kinds(changes) == ["HISTORY_IMPORTED"]
    (imported,) = changes
    assert imported.conversation.id == conv.id
    assert imported.event.kind == "history"
    listed = await harness.stub.ListEvents(
        router_pb2.ListEventsRequest(page_id=PAGE, kinds=["history"])
    )
    assert [e.conversation_id for e in listed.events] == [conv.id]

    # What comes live afterwards is news again, and stored as a webhook's.
    await harness.ingest(ingest(message("m_live", "Quiero pedir", 10_000)))
    changes = await feed(harness)
    assert kinds(changes) == ["HISTORY_IMPORTED", "MESSAGE_CREATED"]
    assert changes[-1].message.mid == "m_live"
    assert changes[-1].message.origin == WEBHOOK
    assert (await conversation(harness)).message_count == 4


async def test_a_marker_fills_an_empty_profile_only(harness: RouterHarness) -> None:
    # Graph's profile lookup already named this person: the marker's name does not win.
    await harness.ingest(ingest(message("m_p1", "hola", 1000)))
    async with harness.sessions() as session, session.begin():
        await session.execute(
            update(Contact).where(Contact.user_id == USER).values(name="Lucía F. (Graph)")
        )
    await harness.ingest(ingest(marker("t_1", 1, "Someone Else", 2000)))
    contact = (await conversation(harness)).contact
    assert contact.name == "Lucía F. (Graph)"
    # On Instagram the marker gives the username, and leaves the name to the profile.
    ig = marker(
        "aWdfZAG06MTpJR01lc3NhZA2VUaHJlYWQ6",
        0,
        "lucia.fz",
        5000,
        platform=events_pb2.INSTAGRAM,
        page=IG_PAGE,
        user=IG_USER,
    )
    await harness.ingest(ingest(ig))
    ig_conv = await conversation(harness, IG_PAGE)
    assert (ig_conv.contact.username, ig_conv.contact.name) == ("lucia.fz", "")
    assert (ig_conv.message_count, ig_conv.last_event_ms, ig_conv.last_inbound_ms) == (0, 0, 0)
    # Exactly one HISTORY_IMPORTED per marker; never EVENT_STORED for one.
    assert kinds(await feed(harness)).count("HISTORY_IMPORTED") == 2
    assert "EVENT_STORED" not in kinds(await feed(harness))


@pytest.mark.parametrize("first", ["webhook", "history"])
async def test_a_message_from_both_sources_is_stored_once(
    harness: RouterHarness, first: str
) -> None:
    live = message("m_both", "¿Tienen talla 38?", 1000)
    old = message("m_both", "¿Tienen talla 38?", 1000, origin=HISTORY)
    one, two = (live, old) if first == "webhook" else (old, live)
    assert (await harness.ingest(ingest(one))).stored == 1
    again = await harness.ingest(ingest(two))
    assert (again.stored, again.duplicates) == (0, 1)
    (stored,) = await messages(harness)
    assert stored.origin == (WEBHOOK if first == "webhook" else HISTORY)
    assert await harness.count(Message) == 1
    assert (await conversation(harness)).message_count == 1
    created = kinds(await feed(harness)).count("MESSAGE_CREATED")
    assert created == (1 if first == "webhook" else 0)


async def test_the_page_s_own_sent_message_read_back_is_not_stored_twice(
    harness: RouterHarness,
) -> None:
    """The echo of a reply (webhook, is_echo) and the same message read from Graph (history,
    not an echo) share the mid: whichever comes second is a duplicate."""
    await harness.ingest(ingest(message("m_echo", "¡Sí!", 1000, echo=True)))
    again = await harness.ingest(
        ingest(message("m_echo", "¡Sí!", 1000, origin=HISTORY, from_page=True))
    )
    assert again.duplicates == 1
    assert await harness.count(Message) == 1


async def test_gap_repair_messages_are_news(harness: RouterHarness) -> None:
    await harness.ingest(ingest(message("m_gap", "¿Me responden?", 4000, origin=GAP_REPAIR)))
    (stored,) = await messages(harness)
    assert stored.origin == GAP_REPAIR
    changes = await feed(harness)
    assert kinds(changes) == ["CONVERSATION_CREATED", "MESSAGE_CREATED"]
    assert changes[-1].message.mid == "m_gap"
    assert changes[-1].message.origin == GAP_REPAIR
    conv = await conversation(harness)
    assert (conv.message_count, conv.last_inbound_ms) == (1, 4000)
    async with harness.sessions() as session:
        origin = (await session.execute(select(Message.origin))).scalar_one()
    assert origin == "gap_repair"


async def test_malformed_origins_are_refused_and_store_nothing(harness: RouterHarness) -> None:
    for request in (
        ingest(message("m_x1", "x", 1000, origin=7)),
        # A marker is the import's: with any other origin it is a producer's bug.
        ingest(message("m_x2", "x", 1000), marker("t_2", 1, "N", 2000, origin=WEBHOOK)),
        ingest(marker("t_3", 1, "N", 2000, origin=GAP_REPAIR)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stub.Ingest(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ".origin" in (caught.value.details() or "")
    assert await harness.count(EventLog) == 0


async def test_an_oversized_marker_is_kept_raw(harness: RouterHarness) -> None:
    long_name = marker("t_4", 1, "n" * (contract.MAX_NAME + 1), 2000)
    long_id = marker("t_" + "9" * contract.MAX_CONVERSATION_ID, 1, "N", 3000)
    reply = await harness.ingest(ingest(long_name, long_id))
    assert reply.stored == 2
    listed = await harness.stub.ListEvents(router_pb2.ListEventsRequest(page_id=PAGE))
    assert [e.kind for e in listed.events] == ["history:invalid", "history:invalid"]
    assert "HISTORY_IMPORTED" not in kinds(await feed(harness))
    assert (await conversation(harness)).contact.name == ""


# -- who may append which origin, over mutual TLS ---------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate_pki(tmp_path_factory.mktemp("pki"), IDENTITIES)


@pytest.fixture
async def secured(harness: RouterHarness, pki: DevPki) -> AsyncIterator:
    """The harness's router servicer behind the production policy and mutual TLS; a stub
    factory by certificate identity."""
    service = await start_server(
        names=[SERVICE_NAME],
        register=lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(
            harness.router.servicer, s
        ),
        access=Policy.build([ROUTER_ACCESS], access_settings({}), allow_unauthenticated=False),
        credentials=pki.security("router").server_credentials(),
    )
    channels: list[grpc.aio.Channel] = []

    async def stub(identity: str) -> router_pb2_grpc.RouterServiceStub:
        channel = pki.security(identity).channel(f"127.0.0.1:{service.port}", "router")
        channels.append(await connected(channel))
        return router_pb2_grpc.RouterServiceStub(channel)

    try:
        yield stub
    finally:
        for channel in channels:
            await channel.close()
        await service.stop(grace=1)


async def denied(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value
    return caught.value.details() or ""


async def test_each_caller_appends_only_its_origins(harness: RouterHarness, secured) -> None:  # type: ignore[no-untyped-def]
    gateway, subscriptions, cli = (
        await secured("gateway"),
        await secured("subscriptions"),
        await secured("cli"),
    )
    history = message("m_s1", "old", 1000, origin=HISTORY)
    webhook = message("m_s2", "new", 2000)
    # The gateway appends webhooks only: one imported event refuses the whole call.
    details = await denied(gateway.Ingest(ingest(webhook, history), timeout=5))
    assert details == "'gateway' may not call Ingest with ORIGIN_HISTORY events (events[1])"
    assert "ORIGIN_GAP_REPAIR" in await denied(
        gateway.Ingest(ingest(message("m_s3", "x", 1, origin=GAP_REPAIR)), timeout=5)
    )
    assert "history markers" in await denied(
        gateway.Ingest(ingest(marker("t_s", 1, "N", 3000)), timeout=5)
    )
    # Subscriptions appends what it read from Graph only, markers as the import's only.
    assert "ORIGIN_WEBHOOK" in await denied(subscriptions.Ingest(ingest(webhook), timeout=5))
    assert "history markers of ORIGIN_GAP_REPAIR" in await denied(
        subscriptions.Ingest(ingest(marker("t_s", 1, "N", 3000, origin=GAP_REPAIR)), timeout=5)
    )
    # Operators may not append at all (the authorization table, before the handler).
    assert await denied(cli.Ingest(ingest(history), timeout=5)) == "'cli' may not call Ingest"
    assert await harness.count(EventLog) == 0

    assert (await gateway.Ingest(ingest(webhook), timeout=5)).stored == 1
    imported = await subscriptions.Ingest(
        ingest(
            history,
            message("m_s4", "gap", 2500, origin=GAP_REPAIR),
            marker("t_s", 1, "N", 3000),
        ),
        timeout=5,
    )
    assert imported.stored == 3
    await harness.settled()
    assert {m.mid: m.origin for m in await messages(harness)} == {
        "m_s1": HISTORY,
        "m_s2": WEBHOOK,
        "m_s4": GAP_REPAIR,
    }


# -- migration 0009 ----------------------------------------------------------------------

_OLD_ROWS = (
    "INSERT INTO contacts (platform, page_id, user_id, created_at_ms)"
    " VALUES ('FACEBOOK', '{page}', '{user}', 1)",
    "INSERT INTO conversations (account_id, platform, page_id, user_id, contact_id,"
    " created_at_ms, last_event_ms, message_count, delivery_watermark_ms, read_watermark_ms)"
    " SELECT 'acme', 'FACEBOOK', '{page}', '{user}', id, 1, 1000, 1, 0, 0 FROM contacts",
    "INSERT INTO messages (conversation_id, platform, page_id, mid, direction, text,"
    " attachments_json, timestamp_ms, is_echo, app_id, metadata, quick_reply_payload,"
    " reply_to_mid, status, standby, created_at_ms) SELECT id, 'FACEBOOK', '{page}', 'm_old',"
    " 'INBOUND', 'hola', '[]', 1000, false, '', '', '', '', 'RECEIVED', false, 1"
    " FROM conversations",
)


def _upgrade_sqlite(path: Path) -> list[tuple[str, str]]:
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade("router", url, "0008_page_versions")
    with sqlite3.connect(path) as conn:
        for statement in _OLD_ROWS:
            conn.execute(statement.format(page=PAGE, user=USER))
    migrate.upgrade("router", url, "0009_message_origin")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT mid, origin FROM messages").fetchall()
    command.downgrade(migrate._config("router", url), "0008_page_versions")
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(messages)")]
    assert "origin" not in columns and "mid" in columns
    return rows


def _upgrade_postgres(database_url: str) -> list[tuple[str, str]]:
    command.downgrade(migrate._config("router", database_url), "0008_page_versions")
    plain = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, options="-c search_path=router") as conn:
        for statement in _OLD_ROWS:
            conn.execute(statement.format(page=PAGE, user=USER))
    migrate.upgrade("router", database_url, "0009_message_origin")
    with psycopg.connect(plain, options="-c search_path=router") as conn:
        return conn.execute("SELECT mid, origin FROM messages").fetchall()


async def test_migration_0009_keeps_existing_messages_as_webhooks_on_sqlite(
    tmp_path: Path,
) -> None:
    rows = await asyncio.to_thread(_upgrade_sqlite, tmp_path / "router.db")
    assert rows == [("m_old", "webhook")]


async def test_migration_0009_keeps_existing_messages_as_webhooks_on_postgres(
    database_url: str,
) -> None:
    rows = await asyncio.to_thread(_upgrade_postgres, database_url)
    assert [tuple(r) for r in rows] == [("m_old", "webhook")]
