"""History import and gap repair through real processes: the fake Graph serves a scripted
history, subscriptions imports it into the router's log, the router applies it; the
assertions read PostgreSQL. The stack fixture checks afterwards that no page token
appeared in any log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pagewire import fakegraph
from tests.e2e.conftest import applied, cli, query, running_stack
from tests.e2e.conftest import connect as connect_page
from tests.support.stack import APP_SECRET, Stack
from tests.support.waiting import free_port, wait_for

PAGE = "109384756201938"
IG_ACCOUNT = "17841405822304914"
# Fast enough for a test, slow enough that a kill lands mid-import.
HISTORY_ENV = {
    "PAGEWIRE_HISTORY_CALLS_PER_SECOND": "20",
    "PAGEWIRE_HISTORY_MESSAGES_PER_CALL": "25",
    "PAGEWIRE_HISTORY_LEASE_S": "2",
    "PAGEWIRE_HISTORY_POLL_S": "0.2",
    "PAGEWIRE_GAP_REPAIR_INTERVAL_S": "0",
    "PAGEWIRE_GAP_REPAIR_GRACE_S": "0",
    "PAGEWIRE_GRAPH_RETRY_BASE_S": "0.05",
}


@pytest.fixture
async def history_stack(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    graph: fakegraph.FakeGraph,
) -> AsyncIterator[Stack]:
    # Subscriptions' /metrics, where gap repair's counter is read.
    metrics_port = free_port()
    async with running_stack(
        tmp_path,
        database_url,
        redis_url,
        redis_prefix,
        graph,
        env=HISTORY_ENV,
        overrides={"subscriptions": {"PAGEWIRE_METRICS_PORT": str(metrics_port)}},
    ) as stack:
        stack.ports["subscriptions_metrics"] = metrics_port
        yield stack


async def fake(graph: fakegraph.FakeGraph, path: str, body: dict) -> dict:  # type: ignore[type-arg]
    async with httpx.AsyncClient(base_url=graph.url, timeout=30) as client:
        answer = await client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def generate(graph: fakegraph.FakeGraph, page_id: str = PAGE, **options: object) -> dict:  # type: ignore[type-arg]
    body = {
        "page_id": page_id,
        "platform": "instagram" if page_id == IG_ACCOUNT else "facebook",
        "conversations": 3,
        "messages": 150,
        "seed": 7,
        **options,
    }
    return await fake(graph, "/_fake/history/generate", body)


async def connect(stack: Stack, page_id: str = PAGE, *extra: str) -> dict:  # type: ignore[type-arg]
    return await connect_page(stack, page_id, "acme", *extra)


async def slow_down(stack: Stack) -> None:
    """Subscriptions again at 4 Graph calls/s: 18 result pages take 4.5 s, so a kill
    between a quarter and the whole cannot miss, however busy the machine is."""
    await stack.stop("subscriptions")
    await stack.start("subscriptions", PAGEWIRE_HISTORY_CALLS_PER_SECOND="4")


def script_mids(script: dict) -> list[list[str]]:  # type: ignore[type-arg]
    """Each conversation's mids, oldest first, as the fake's script lists them."""
    return [[m["id"] for m in c["messages"]] for c in script["conversations"]]


def stored(database_url: str, page_id: str = PAGE) -> list[tuple]:  # type: ignore[type-arg]
    """(user, mid, origin) of the page's stored messages, in Meta's order per person."""
    return query(
        database_url,
        "SELECT c.user_id, m.mid, m.origin FROM router.messages m"
        " JOIN router.conversations c ON c.id = m.conversation_id"
        " WHERE m.page_id = %s ORDER BY c.user_id, m.timestamp_ms, m.id",
        page_id,
    )


def history_row(database_url: str, page_id: str = PAGE) -> dict:  # type: ignore[type-arg]
    rows = query(
        database_url,
        "SELECT state, conversations_total, conversations_done, messages_read,"
        " messages_stored, graph_calls, error FROM subscriptions.history_imports"
        " WHERE page_id = %s",
        page_id,
    )
    if not rows:
        return {}
    keys = ("state", "total", "done", "read", "stored", "calls", "error")
    return dict(zip(keys, rows[0], strict=True))


def feed_kinds(database_url: str) -> list[str]:
    return [
        kind
        for (kind,) in query(
            database_url,
            "SELECT kind FROM router.changes WHERE account_id = 'acme' ORDER BY cursor",
        )
    ]


async def done(database_url: str, page_id: str = PAGE, timeout: float = 60.0) -> dict:  # type: ignore[type-arg]
    await wait_for(
        lambda: history_row(database_url, page_id).get("state") in ("DONE", "FAILED"),
        timeout=timeout,
        what="the history import to end",
    )
    await applied(database_url)
    return history_row(database_url, page_id)


def assert_complete(database_url: str, script: dict, page_id: str = PAGE) -> None:  # type: ignore[type-arg]
    rows = stored(database_url, page_id)
    mids = [mid for _, mid, _ in rows]
    assert len(mids) == len(set(mids)), "a message was stored twice"
    by_user: dict[str, list[str]] = {}
    for user, mid, _ in rows:
        by_user.setdefault(user, []).append(mid)
    expected = {c["user"]["id"]: [m["id"] for m in c["messages"]] for c in script["conversations"]}
    assert by_user == expected


async def test_connect_imports_every_conversation_once_in_metas_order(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str
) -> None:
    script = await generate(graph)
    assert sum(len(m) for m in script_mids(script)) == 450
    reply = await connect(history_stack)
    # The import is asked for with the connection, and already under way.
    assert reply["page"]["history"]["state"] in ("HISTORY_PENDING", "HISTORY_RUNNING")
    assert reply["page"]["history"]["days"] == 90

    followed = await cli(
        history_stack, "pages", "history", "--platform", "facebook", "--page-id", PAGE
    )
    # Without a terminal the progress is a line per change, the last one says it is done.
    lines = followed.stdout.strip().splitlines()
    assert lines[-1].startswith(f"history of page {PAGE} imported (90 days): 3 conversation(s)")
    assert any(line.startswith("done: 3/3 conversations, 450 messages") for line in lines)
    row = await done(database_url)
    assert row["state"] == "DONE" and row["read"] == 450 and row["stored"] == 450

    assert_complete(database_url, script)
    assert {origin for _, _, origin in stored(database_url)} == {"history"}
    conversations = query(
        database_url,
        "SELECT c.user_id, c.message_count, k.name FROM router.conversations c"
        " JOIN router.contacts k ON k.platform = c.platform AND k.page_id = c.page_id"
        " AND k.user_id = c.user_id WHERE c.page_id = %s ORDER BY c.user_id",
        PAGE,
    )
    names = {c["user"]["id"]: c["user"].get("name", "") for c in script["conversations"]}
    assert [(u, n) for u, _, n in conversations] == sorted(names.items())
    assert all(count == 150 for _, count, _ in conversations)
    kinds = feed_kinds(database_url)
    # Old history does not flood the feed: one change per conversation, no new-message ones.
    assert kinds.count("HISTORY_IMPORTED") == 3
    assert "MESSAGE_CREATED" not in kinds

    listed = await cli(history_stack, "pages", "list")
    assert "done: 3 conv, 450 msgs" in listed.stdout

    # The same import again: everything read again, nothing stored, nobody told again.
    again = await cli(
        history_stack, "pages", "history", "--platform", "facebook", "--page-id", PAGE
    )
    assert "450 message(s) read, 0 new" in again.stdout
    await applied(database_url)
    assert len(stored(database_url)) == 450
    assert feed_kinds(database_url).count("HISTORY_IMPORTED") == 3


async def test_import_resumes_after_subscriptions_is_killed_half_way(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str
) -> None:
    script = await generate(graph)
    await slow_down(history_stack)
    await connect(history_stack, PAGE, "--no-history")
    assert history_row(database_url) == {}
    await cli(
        history_stack,
        "pages",
        "history",
        "--platform",
        "facebook",
        "--page-id",
        PAGE,
        "--no-wait",
    )
    await wait_for(
        lambda: history_row(database_url).get("read", 0) >= 225,
        timeout=60,
        interval=0.01,
        what="half the messages to be read",
    )
    await history_stack.kill("subscriptions")
    half = history_row(database_url)
    assert half["state"] == "RUNNING" and half["read"] < 450

    await history_stack.start("subscriptions")
    row = await done(database_url)
    assert row["state"] == "DONE"
    # Counted once each: the counters move with the cursor, in one transaction.
    assert row["read"] == 450 and row["stored"] == 450 and row["done"] == 3
    assert_complete(database_url, script)
    assert feed_kinds(database_url).count("HISTORY_IMPORTED") == 3


async def test_import_waits_for_a_killed_router_and_completes(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str
) -> None:
    script = await generate(graph)
    await slow_down(history_stack)
    await connect(history_stack)
    await wait_for(
        lambda: history_row(database_url).get("read", 0) >= 100,
        timeout=60,
        interval=0.01,
        what="some messages to be read",
    )
    await history_stack.kill("router")
    assert history_row(database_url)["read"] < 450  # the kill lands mid-import
    await history_stack.start("router")
    row = await done(database_url)
    assert row["state"] == "DONE" and row["read"] == 450 and row["stored"] == 450
    assert_complete(database_url, script)


async def test_a_message_both_imported_and_delivered_is_stored_once(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str
) -> None:
    script = await generate(graph, conversations=2, messages=40)
    newest = script["conversations"][0]["messages"][-5:]
    await connect(history_stack, PAGE, "--no-history")
    # The newest five of one conversation come as webhooks first (from the user or echoes).
    delivered = await fake(
        graph,
        "/_fake/history/deliver",
        {
            "page_id": PAGE,
            "gateway_url": history_stack.gateway_url,
            "app_secret": APP_SECRET,
            "mids": [m["id"] for m in newest],
        },
    )
    assert set(delivered["statuses"]) == {200}
    await applied(database_url)
    await cli(history_stack, "pages", "history", "--platform", "facebook", "--page-id", PAGE)
    row = await done(database_url)
    assert row["read"] == 80
    live = {m["id"] for m in newest if not m.get("deleted")}
    assert row["stored"] == 80 - len(live)
    assert_complete(database_url, script)
    origins = {mid: origin for _, mid, origin in stored(database_url)}
    assert {mid for mid, origin in origins.items() if origin == "webhook"} == live


async def test_a_rate_limit_mid_way_is_waited_out(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str
) -> None:
    script = await generate(graph)
    usage = json.dumps(
        {PAGE: [{"type": "messenger", "call_count": 100, "estimated_time_to_regain_access": 0}]}
    )
    # The fourth and fifth message calls are refused with 613 and Meta's usage headers.
    await fake(
        graph,
        "/_fake/fail",
        {
            "method": "GET",
            "path_contains": "/messages",
            "preset": "613",
            "after": 3,
            "times": 2,
            "headers": {"X-Business-Use-Case-Usage": usage},
        },
    )
    await connect(history_stack)
    row = await done(database_url)
    assert row["state"] == "DONE" and row["read"] == 450 and row["stored"] == 450
    assert_complete(database_url, script)
    async with httpx.AsyncClient(base_url=graph.url) as client:
        recorded = (await client.get("/_fake/requests")).json()["requests"]
    message_calls = [r for r in recorded if r["method"] == "GET" and "/messages" in r["path"]]
    # 3 conversations × 6 result pages, and the two refused calls made again.
    assert len(message_calls) == 18 + 2


async def test_gap_repair_finds_what_meta_never_delivered(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str
) -> None:
    await generate(graph, conversations=2, messages=10)
    await connect(history_stack)
    await done(database_url)
    before = len(stored(database_url))
    script = (await _script(graph))["conversations"]
    user = script[0]["user"]["id"]
    # Two new messages: the first comes as a webhook, the second never does (an empty
    # delivery only tells the fake where the gateway is).
    await fake(
        graph,
        "/_fake/history/deliver",
        {
            "page_id": PAGE,
            "gateway_url": history_stack.gateway_url,
            "app_secret": APP_SECRET,
            "mids": [],
        },
    )
    sent = await fake(
        graph,
        "/_fake/history/message",
        {"page_id": PAGE, "user_id": user, "text": "¿Siguen abiertos?", "deliver": True},
    )
    # Written in the very millisecond the page was connected: Graph's whole-second time
    # reads earlier than the connection, and it is still a gap, not history.
    ((connected_at_ms,),) = query(
        database_url,
        "SELECT created_at_ms FROM subscriptions.page_connections WHERE page_id = %s",
        PAGE,
    )
    dropped = await fake(
        graph,
        "/_fake/history/message",
        {
            "page_id": PAGE,
            "user_id": user,
            "text": "Hola, ¿hay alguien?",
            "created_time_ms": connected_at_ms,
            "deliver": False,
        },
    )
    sent_mid, dropped_mid = sent["message"]["id"], dropped["message"]["id"]
    assert sent["delivered"] and not dropped["delivered"]
    await wait_for(
        lambda: any(mid == sent_mid for _, mid, _ in stored(database_url)),
        timeout=30,
        what="the delivered message to be stored",
    )
    assert dropped_mid not in {mid for _, mid, _ in stored(database_url)}

    await applied(database_url)
    created_before = feed_kinds(database_url).count("MESSAGE_CREATED")
    repaired = await cli(history_stack, "pages", "repair-gaps")
    assert "1 message(s) Meta never delivered, now stored" in repaired.stdout
    await applied(database_url)
    origins = {mid: origin for _, mid, origin in stored(database_url)}
    assert origins[dropped_mid] == "gap_repair"
    assert origins[sent_mid] == "webhook"
    assert len(origins) == before + 2
    # A gap is news: consumers are told of the message.
    assert feed_kinds(database_url).count("MESSAGE_CREATED") == created_before + 1
    assert "gap filled" in history_stack.logs()
    assert gaps_counted(history_stack) == 1.0

    again = await cli(history_stack, "pages", "repair-gaps")
    assert "0 message(s) Meta never delivered" in again.stdout


async def _script(graph: fakegraph.FakeGraph, page_id: str = PAGE) -> dict:  # type: ignore[type-arg]
    async with httpx.AsyncClient(base_url=graph.url) as client:
        answer = await client.get("/_fake/history", params={"page_id": page_id})
    assert answer.status_code == 200, answer.text
    return answer.json()


def gaps_counted(stack: Stack) -> float:
    """pagewire_history_gaps_filled_total{platform="facebook"} on subscriptions' /metrics."""
    port = stack.ports["subscriptions_metrics"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('pagewire_history_gaps_filled_total{platform="facebook"}'):
            return float(line.split()[-1])
    raise AssertionError("pagewire_history_gaps_filled_total is not exported")


async def test_an_instagram_account_is_imported_with_usernames(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str
) -> None:
    script = await generate(graph, IG_ACCOUNT, conversations=2, messages=30)
    await connect(history_stack, IG_ACCOUNT)
    row = await done(database_url, IG_ACCOUNT)
    assert row["state"] == "DONE" and row["read"] == 60 and row["stored"] == 60
    assert_complete(database_url, script, IG_ACCOUNT)
    # Conversations API calls for an Instagram account go to the Instagram host, asking
    # for the instagram platform.
    async with httpx.AsyncClient(base_url=graph.url) as client:
        recorded = (await client.get("/_fake/requests")).json()["requests"]
    listing = [r for r in recorded if r["path"].endswith(f"{IG_ACCOUNT}/conversations")]
    assert listing and all(r["query"].get("platform") == "instagram" for r in listing)
    usernames = query(
        database_url,
        "SELECT k.user_id, k.username FROM router.contacts k WHERE k.page_id = %s",
        IG_ACCOUNT,
    )
    expected = {c["user"]["id"]: c["user"]["username"] for c in script["conversations"]}
    assert dict(usernames) == expected


async def test_live_webhooks_are_stored_while_an_import_runs(
    history_stack: Stack, graph: fakegraph.FakeGraph, database_url: str, fixtures_dir: Path
) -> None:
    await generate(graph)
    await slow_down(history_stack)
    await connect(history_stack)
    await wait_for(
        lambda: history_row(database_url).get("read", 0) > 0,
        timeout=30,
        what="the import to be under way",
    )
    # A customer writes now: the webhook is acknowledged and applied during the import.
    sent = await cli(
        history_stack, "webhook", "send", str(fixtures_dir / "meta" / "01_text_message.json")
    )
    assert sent.stdout.startswith("200")
    mid = json.loads((fixtures_dir / "meta" / "01_text_message.json").read_text())["entry"][0][
        "messaging"
    ][0]["message"]["mid"]
    await wait_for(
        lambda: any(m == mid for _, m, _ in stored(database_url)),
        timeout=30,
        what="the live message to be applied",
    )
    assert history_row(database_url)["state"] == "RUNNING"
    row = await done(database_url)
    assert row["state"] == "DONE" and row["stored"] == 450
    origins = {m: origin for _, m, origin in stored(database_url)}
    assert origins[mid] == "webhook" and len(origins) == 451
    # The live message is news; the imported ones are not.
    assert feed_kinds(database_url).count("MESSAGE_CREATED") == 1
