"""A signed webhook becomes a stored message, exactly once — through real processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from pagewire import fakegraph
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from tests.e2e.conftest import PAGE_TOKENS, applied, cli, connect, query, sign
from tests.support.stack import Stack
from tests.support.waiting import free_port

PAGE = "109384756201938"
DINER = "117465829304716"
INSTAGRAM = "17841405822304914"


def fixture_bodies(fixtures_dir: Path) -> list[tuple[str, bytes, str]]:
    """(file name, exact bytes, Meta's signature) of every Meta fixture."""
    signatures = json.loads((fixtures_dir / "meta" / "SIGNATURES.json").read_text())
    out = []
    for item in signatures["fixtures"]:
        path = fixtures_dir / "meta" / item["file"]
        if path.exists():
            out.append((item["file"], path.read_bytes(), item["x_hub_signature_256_of_file_bytes"]))
    return out


def webhook_path(body: bytes) -> str:
    return (
        "/webhooks/instagram" if json.loads(body)["object"] == "instagram" else "/webhooks/facebook"
    )


def items_in(body: bytes) -> int:
    entries = json.loads(body)["entry"]
    return sum(len(e.get("messaging", [])) + len(e.get("standby", [])) for e in entries)


async def post(stack: Stack, body: bytes, signature: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        return await client.post(
            webhook_path(body),
            content=body,
            headers={"X-Hub-Signature-256": signature or sign(body)},
        )


PARKED = "SELECT count(*) FROM router.events WHERE state = 'parked'"


async def test_readme_walkthrough(
    stack: Stack, graph: fakegraph.FakeGraph, fixtures_dir: Path, database_url: str
) -> None:
    connected = await connect(stack, PAGE)
    assert connected["page"]["status"] == "SUBSCRIBED"
    (subscribe,) = graph.state.requests_to("POST", f"/{PAGE}/subscribed_apps")
    assert PAGE_TOKENS[PAGE] not in json.dumps(subscribe.get("query", {}))

    sent = await cli(stack, "webhook", "send", str(fixtures_dir / "meta" / "01_text_message.json"))
    assert sent.stdout.startswith("200")
    await applied(database_url)  # visible after the apply lag (milliseconds)

    listed = json.loads((await cli(stack, "messages", "list", "--page-id", PAGE, "--json")).stdout)
    assert len(listed) == 1
    (message,) = listed
    assert message["mid"].startswith("m_Dq8DMOAoUZJrXuusle2")
    assert message["text"] == "Hola, ¿tienen envío a Medellín? 🙂"
    assert message["direction"] == "INBOUND"
    assert message["timestamp_ms"] == 1778163045000

    table = (await cli(stack, "messages", "list", "--page-id", PAGE)).stdout
    assert "Hola, ¿tienen envío a Medellín? 🙂" in table
    conversations = json.loads(
        (await cli(stack, "conversations", "list", "--account", "acme", "--json")).stdout
    )
    assert [(c["page_id"], c["user_id"]) for c in conversations] == [(PAGE, "7294015836620194")]
    assert PAGE_TOKENS[PAGE] not in stack.logs()


async def test_every_fixture_twice_is_stored_once(
    stack: Stack, fixtures_dir: Path, database_url: str
) -> None:
    for page in (PAGE, DINER, INSTAGRAM):
        await connect(stack, page)
    bodies = fixture_bodies(fixtures_dir)
    for _ in range(2):
        for name, body, signature in bodies:
            response = await post(stack, body, signature)
            assert response.status_code == 200, (name, response.text)

    expected = sum(items_in(body) for _, body, _ in bodies)
    assert query(database_url, "SELECT count(*) FROM router.events")[0][0] == expected
    await applied(database_url)
    doubled = query(
        database_url,
        "SELECT event_id FROM router.events"
        " GROUP BY platform, page_id, event_id HAVING count(*) > 1",
    )
    assert doubled == []
    assert query(database_url, PARKED)[0][0] == 0

    batch = json.loads(dict((n, b) for n, b, _ in bodies)["02_batch_two_pages_two_messages.json"])
    mids = [item["message"]["mid"] for entry in batch["entry"] for item in entry["messaging"]]
    rows = query(
        database_url,
        "SELECT c.page_id, c.user_id, m.text FROM router.messages m"
        " JOIN router.conversations c ON c.id = m.conversation_id WHERE m.mid = ANY(%s)",
        mids,
    )
    assert len(rows) == 4
    assert {page for page, _, _ in rows} == {PAGE, DINER}
    assert len({(page, user) for page, user, _ in rows}) == 4

    # The echo (user = recipient) joined the user's conversation instead of starting its own.
    echo = query(
        database_url,
        "SELECT c.user_id, m.direction, m.app_id FROM router.messages m"
        " JOIN router.conversations c ON c.id = m.conversation_id"
        " WHERE m.is_echo AND m.page_id = %s ORDER BY m.timestamp_ms",
        PAGE,
    )
    assert echo[0] == ("7294015836620194", "OUTBOUND", "1094728365019283")


async def test_two_routers_one_new_conversation(stack: Stack, database_url: str) -> None:
    await connect(stack, PAGE)
    second = await stack.start("router", name="router2", PAGEWIRE_ROUTER_PORT=str(free_port()))
    user = "9000000000000001"
    events = [
        events_pb2.Event(
            id=f"m_two_routers_{i}",
            platform=events_pb2.FACEBOOK,
            page_id=PAGE,
            user_id=user,
            direction=events_pb2.INBOUND,
            timestamp_ms=1778163000000 + i,
            raw_json="{}",
            message=events_pb2.MessageEvent(mid=f"m_two_routers_{i}", text=f"msg {i}"),
        )
        for i in range(60)
    ]
    async with (
        stack.channel("router", identity="gateway") as one,
        stack.channel("router", port=second.port, identity="gateway") as two,
    ):
        stubs = [router_pb2_grpc.RouterServiceStub(one), router_pb2_grpc.RouterServiceStub(two)]
        # Every event goes to both replicas, in overlapping windows, all at once.
        calls = [
            stubs[(i // 3) % 2].Ingest(
                router_pb2.IngestRequest(events=events[i : i + 6]), timeout=20
            )
            for i in range(0, 60, 3)
        ] + [
            stubs[1 - (i // 3) % 2].Ingest(
                router_pb2.IngestRequest(events=events[i : i + 3]), timeout=20
            )
            for i in range(0, 60, 3)
        ]
        await asyncio.gather(*calls)
    await applied(database_url)
    assert query(database_url, "SELECT count(*) FROM router.contacts")[0][0] == 1
    assert query(database_url, "SELECT count(*) FROM router.conversations")[0][0] == 1
    assert query(database_url, "SELECT count(*), count(DISTINCT mid) FROM router.messages")[0] == (
        60,
        60,
    )


async def test_router_down_means_503_then_nothing_lost(
    stack: Stack, fixtures_dir: Path, database_url: str
) -> None:
    await connect(stack, PAGE)
    body = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    await stack.stop("router")
    down = await post(stack, body)
    assert down.status_code == 503
    assert query(database_url, "SELECT count(*) FROM router.events")[0][0] == 0

    await stack.start("router")
    up = await post(stack, body)
    assert up.status_code == 200
    again = await post(stack, body)
    assert again.status_code == 200
    await applied(database_url)
    assert query(database_url, "SELECT count(*) FROM router.messages")[0][0] == 1


async def test_unknown_page_is_parked_until_connected(
    stack: Stack, fixtures_dir: Path, database_url: str
) -> None:
    body = (fixtures_dir / "meta" / "02_batch_two_pages_two_messages.json").read_bytes()
    response = await post(stack, body)
    assert response.status_code == 200
    await applied(database_url)
    assert query(database_url, PARKED)[0][0] == 4
    assert query(database_url, "SELECT count(*) FROM router.messages")[0][0] == 0

    connected = await connect(stack, PAGE)
    assert connected["parked_routed"] == 2
    await applied(database_url)
    listed = json.loads((await cli(stack, "messages", "list", "--page-id", PAGE, "--json")).stdout)
    assert sorted(m["text"] for m in listed) == ["Is the blue one still in stock?", "hi"]
    assert query(database_url, PARKED)[0][0] == 2

    await connect(stack, DINER)
    await applied(database_url)
    assert query(database_url, PARKED)[0][0] == 0
    assert query(database_url, "SELECT count(*) FROM router.messages")[0][0] == 4


async def test_peer_bodies_never_5xx_and_every_mid_is_kept_once(
    stack: Stack, fixtures_dir: Path, database_url: str
) -> None:
    # (page, mid): the same placeholder mid appears under different pages in these bodies.
    mids: set[tuple[str, str]] = set()
    for path in sorted((fixtures_dir / "peers").glob("*.json")):
        body = path.read_bytes()
        for _ in range(2):
            response = await post(stack, body)
            assert response.status_code < 500, (path.name, response.status_code, response.text)
        for entry in json.loads(body).get("entry", []):
            for item in entry.get("messaging", []) + entry.get("standby", []):
                message = item.get("message")
                if isinstance(message, dict) and message.get("mid"):
                    mids.add((str(entry["id"]), str(message["mid"])))
    assert mids
    kept = query(
        database_url,
        # Parked or applied, every entry is in the log.
        "SELECT page_id, event_id, count(*) FROM router.events"
        " WHERE event_id = ANY(%s) GROUP BY page_id, event_id",
        [mid for _, mid in mids],
    )
    assert {(page, mid) for page, mid, _ in kept} == mids
    assert all(count == 1 for _, _, count in kept)
