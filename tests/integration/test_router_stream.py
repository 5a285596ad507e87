"""StreamEvents: a consumer cut off mid-stream resumes from its cursor, nothing lost or doubled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from pagewire.proto import router_pb2
from tests.support.routerharness import PAGE, RouterHarness, event, router_harness


@pytest.fixture
async def harness(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator:
    async with router_harness(database_url, redis_url, redis_prefix) as running:
        running.subscriptions.connect(PAGE, "acme")
        yield running


async def take(harness: RouterHarness, after: int, count: int) -> list[router_pb2.Change]:
    """Reads `count` changes after `after`, then hangs up (as a consumer that dies would)."""
    call = harness.stub.StreamEvents(
        router_pb2.StreamEventsRequest(account_id="acme", after_cursor=after)
    )
    got: list[router_pb2.Change] = []
    async with asyncio.timeout(10):
        async for change in call:
            got.append(change)
            if len(got) == count:
                break
    call.cancel()
    return got


async def test_resume_from_cursor_gets_every_change_once_in_order(
    harness: RouterHarness,
) -> None:
    for batch in range(6):
        events = [
            event("message", f"m_{batch}_{i}", 1000 + batch * 10 + i, text=f"{batch}.{i}")
            for i in range(5)
        ]
        await harness.ingest(router_pb2.IngestRequest(events=events))
    expected = 1 + 30  # the conversation, then thirty messages

    first = await take(harness, 0, 12)
    rest = await take(harness, first[-1].cursor, expected - 12)
    changes = first + rest
    assert [c.cursor for c in changes] == list(range(1, expected + 1))
    assert changes[0].kind == router_pb2.CONVERSATION_CREATED
    assert changes[0].conversation.page_id == PAGE
    texts = [c.message.text for c in changes[1:]]
    assert sorted(texts) == sorted(f"{b}.{i}" for b in range(6) for i in range(5))
    assert all(c.kind == router_pb2.MESSAGE_CREATED for c in changes[1:])


async def test_live_changes_arrive_while_streaming(harness: RouterHarness) -> None:
    await harness.ingest(
        router_pb2.IngestRequest(events=[event("echo", "m_out", 1000, text="hello")])
    )
    call = harness.stub.StreamEvents(router_pb2.StreamEventsRequest(account_id="acme"))
    seen: list[router_pb2.Change] = []

    async def consume() -> None:
        async for change in call:
            seen.append(change)
            if len(seen) == 5:
                return

    consumer = asyncio.ensure_future(consume())
    read = event("read", "read:1", 1500, watermark_ms=1000)
    react = event("reaction", "reaction:1", 1600, mid="m_out", action="react", emoji="👍")
    edit = event("edit", "edit:1", 1700, mid="m_out", text="hello!", num_edit=1)
    for item in (read, react, edit):
        await harness.ingest(router_pb2.IngestRequest(events=[item]))
    await asyncio.wait_for(consumer, 10)
    call.cancel()
    kinds = [router_pb2.ChangeKind.Name(c.kind) for c in seen]
    assert kinds == [
        "CONVERSATION_CREATED",
        "MESSAGE_CREATED",
        "MESSAGE_STATUS_CHANGED",
        "REACTION_CHANGED",
        "MESSAGE_EDITED",
    ]
    assert seen[2].message.status == router_pb2.READ
    assert [r.emoji for r in seen[3].message.reactions] == ["👍"]
    assert seen[4].message.text == "hello!"


async def test_bad_stream_requests(harness: RouterHarness) -> None:
    for request, field in (
        (router_pb2.StreamEventsRequest(), "account_id"),
        (router_pb2.StreamEventsRequest(account_id="acme", after_cursor=-1), "after_cursor"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in harness.stub.StreamEvents(request):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in caught.value.details()
