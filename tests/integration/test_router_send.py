"""SendMessage through the (fake) Send API: windows, idempotency, errors by code, actions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import select

from pagewire import fakegraph
from pagewire.graph.client import GraphClient
from pagewire.graph.config import GraphSettings
from pagewire.proto import events_pb2, router_pb2
from services.router.send import Sender, _request_hash
from services.router.store import Conversation, OutboundSend
from tests.support.fakes import StandInVault
from tests.support.routerharness import PAGE, USER, RouterHarness, event, router_harness

TOKEN = "EAAGsendTestToken0000000000000000000000000001"
HOUR = 3600 * 1000


@pytest.fixture
async def graph() -> AsyncIterator[fakegraph.FakeGraph]:
    fake = await fakegraph.start()
    yield fake
    await fake.stop()


@pytest.fixture
def vault() -> StandInVault:
    return StandInVault(TOKEN)


@pytest.fixture
async def client(graph: fakegraph.FakeGraph) -> AsyncIterator[GraphClient]:
    graph_client = GraphClient(
        GraphSettings(url=graph.url, instagram_url=graph.url, retry_base_s=0.02, retry_max_wait_s=5)
    )
    yield graph_client
    await graph_client.aclose()


def sending(client: GraphClient, vault: StandInVault):  # type: ignore[no-untyped-def]
    def make(sessions, locks, pages):  # type: ignore[no-untyped-def]
        return Sender(sessions, locks, pages, client, vault, app_id="842019375510284")

    return make


@pytest.fixture
async def harness(database_url, redis_url, redis_prefix, client, vault) -> AsyncIterator:  # type: ignore[no-untyped-def]
    async with router_harness(
        database_url, redis_url, redis_prefix, sender=sending(client, vault)
    ) as running:
        running.subscriptions.connect(PAGE, "acme", human_agent=True)
        yield running


async def person_wrote(harness: RouterHarness, hours_ago: float, mid: str = "m_in") -> None:
    ts = int(time.time() * 1000 - hours_ago * HOUR)
    await harness.ingest(router_pb2.IngestRequest(events=[event("message", mid, ts)]))


def request(key: str, text: str = "Sí, enviamos 🙂", **extra) -> router_pb2.SendMessageRequest:  # type: ignore[no-untyped-def]
    return router_pb2.SendMessageRequest(
        platform=events_pb2.FACEBOOK,
        page_id=PAGE,
        user_id=USER,
        text=text,
        idempotency_key=key,
        **extra,
    )


async def test_send_inside_the_window(harness: RouterHarness, graph) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=1)
    reply = await harness.stub.SendMessage(request("k-1"))
    assert reply.state == router_pb2.ACCEPTED
    assert (reply.messaging_type, reply.tag) == ("RESPONSE", "")
    (sent,) = graph.state.send.sent
    assert reply.mids == [sent["mid"]]
    assert sent["message"]["text"] == "Sí, enviamos 🙂"
    (call,) = graph.state.requests_to("POST", f"/{PAGE}/messages")
    assert TOKEN not in json.dumps(call.get("query", {}))
    (stored,) = reply.messages
    assert (stored.mid, stored.direction, stored.status) == (
        sent["mid"],
        events_pb2.OUTBOUND,
        router_pb2.SENT,
    )
    assert stored.idempotency_key == "k-1"


async def test_same_key_sends_once(harness: RouterHarness, graph) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=1)
    first = await harness.stub.SendMessage(request("k-same"))
    again = await harness.stub.SendMessage(request("k-same"))
    assert len(graph.state.send.sent) == 1
    assert again.replayed and list(again.mids) == list(first.mids)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SendMessage(request("k-same", text="something else"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_same_key_on_two_routers_at_once_sends_once(  # type: ignore[no-untyped-def]
    database_url, redis_url, redis_prefix, client, vault, graph
) -> None:
    make = sending(client, vault)
    async with (
        router_harness(database_url, redis_url, redis_prefix, sender=make) as one,
        router_harness(database_url, redis_url, redis_prefix, sender=make) as two,
    ):
        for h in (one, two):
            h.subscriptions.connect(PAGE, "acme")
        await person_wrote(one, hours_ago=1)
        replies = await asyncio.gather(
            *(h.stub.SendMessage(request("k-two")) for h in (one, two, one, two))
        )
    assert len(graph.state.send.sent) == 1
    assert len({tuple(r.mids) for r in replies}) == 1
    assert sum(not r.replayed for r in replies) == 1


async def test_outside_24h_needs_human_agent(harness: RouterHarness, graph) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SendMessage(request("k-late"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "24-hour window closed at" in caught.value.details()
    assert graph.state.send.sent == []
    assert await harness.count(OutboundSend) == 0

    reply = await harness.stub.SendMessage(request("k-agent", human_agent=True))
    assert (reply.messaging_type, reply.tag) == ("MESSAGE_TAG", "HUMAN_AGENT")
    assert graph.state.send.sent[0]["tag"] == "HUMAN_AGENT"


async def test_human_agent_needs_the_page_enabled_and_7_days(  # type: ignore[no-untyped-def]
    harness: RouterHarness, graph
) -> None:
    await person_wrote(harness, hours_ago=8 * 24)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SendMessage(request("k-week", human_agent=True))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "HUMAN_AGENT window" in caught.value.details()
    harness.subscriptions.connect(PAGE, "acme", human_agent=False)
    harness.router.pages._directory.forget(events_pb2.FACEBOOK, PAGE)  # type: ignore[attr-defined]
    await person_wrote(harness, hours_ago=30, mid="m_in2")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SendMessage(request("k-off", human_agent=True))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not enabled for the HUMAN_AGENT tag" in caught.value.details()
    assert graph.state.send.sent == []


async def test_token_refused_marks_reauth(harness: RouterHarness, graph, vault) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=1)
    graph.state.fail(method="POST", path_contains="/messages", preset="190_460", times=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SendMessage(request("k-190"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert vault.invalid == [(190, 460)]
    listed = await harness.stub.ListMessages(router_pb2.ListMessagesRequest(page_id=PAGE))
    failed = [m for m in listed.messages if m.status == router_pb2.FAILED]
    assert [(m.error_code, m.error_subcode) for m in failed] == [(190, 460)]
    # Retrying the key returns the recorded refusal; nothing is sent again.
    again = await harness.stub.SendMessage(request("k-190"))
    assert again.state == router_pb2.REJECTED and again.replayed
    assert len(graph.state.requests_to("POST", "/messages")) == 1


async def test_rate_limit_is_retried_then_sent(harness: RouterHarness, graph) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=1)
    limit = {"message": "(#613) Calls to this api have exceeded the rate limit.", "code": 613}
    graph.state.fail(method="POST", path_contains="/messages", status=400, error=limit, times=1)
    reply = await harness.stub.SendMessage(request("k-613"))
    assert reply.state == router_pb2.ACCEPTED
    assert len(graph.state.requests_to("POST", "/messages")) == 2


async def test_person_unavailable_fails_without_retry(harness: RouterHarness, graph) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=1)
    graph.state.fail(method="POST", path_contains="/messages", preset="551", times=1)
    reply = await harness.stub.SendMessage(request("k-551"))
    assert reply.state == router_pb2.REJECTED
    assert (reply.error_code, reply.error_subcode) == (551, 1545041)
    assert len(graph.state.requests_to("POST", "/messages")) == 1
    (failed,) = reply.messages
    assert failed.status == router_pb2.FAILED and "isn't available" in failed.error_message


async def test_text_and_attachments_store_every_mid(harness: RouterHarness, graph) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=1)
    reply = await harness.stub.SendMessage(
        request(
            "k-parts",
            attachments=[
                router_pb2.OutgoingAttachment(type="image", url="https://example.com/a.png"),
                router_pb2.OutgoingAttachment(type="file", url="https://example.com/b.pdf"),
            ],
            quick_replies=[router_pb2.QuickReply(title="Yes", payload="YES")],
        )
    )
    assert len(reply.mids) == 3 == len(graph.state.send.sent)
    assert {m.mid for m in reply.messages} == set(reply.mids)
    assert "quick_replies" in graph.state.send.sent[-1]["message"]


async def pending(harness: RouterHarness, key: str) -> None:
    """A send recorded as PENDING by a router that died before Graph's answer was stored."""
    async with harness.sessions() as session, session.begin():
        (conversation_id,) = (
            await session.execute(select(Conversation.id).where(Conversation.user_id == USER))
        ).one()
        session.add(
            OutboundSend(
                platform="FACEBOOK",
                page_id=PAGE,
                idempotency_key=key,
                conversation_id=conversation_id,
                request_hash=_request_hash(request(key)),
                state="PENDING",
                mids_json="[]",
                messaging_type="RESPONSE",
                tag="",
                error_code=0,
                error_subcode=0,
                error_message="",
                created_at_ms=1,
                updated_at_ms=1,
            )
        )


async def test_a_send_left_pending_by_a_crash_is_never_resent(  # type: ignore[no-untyped-def]
    harness: RouterHarness, graph
) -> None:
    await person_wrote(harness, hours_ago=1)
    await pending(harness, "k-crash")
    settled = await harness.stub.SendMessage(request("k-crash"))
    assert settled.state == router_pb2.UNKNOWN and settled.replayed
    assert "not sent again" in settled.error_message
    assert graph.state.send.sent == []


async def test_a_pending_send_whose_echo_came_is_accepted(  # type: ignore[no-untyped-def]
    harness: RouterHarness, graph
) -> None:
    await person_wrote(harness, hours_ago=1)
    await pending(harness, "k-echoed")
    echo = event("echo", "m_echoed", int(time.time() * 1000), text="Sí, enviamos 🙂")
    echo.message.metadata = "pagewire:k-echoed"
    await harness.ingest(router_pb2.IngestRequest(events=[echo]))
    settled = await harness.stub.SendMessage(request("k-echoed"))
    assert settled.state == router_pb2.ACCEPTED and list(settled.mids) == ["m_echoed"]
    assert graph.state.send.sent == []


async def test_sender_actions_and_bad_input(harness: RouterHarness, graph) -> None:  # type: ignore[no-untyped-def]
    await person_wrote(harness, hours_ago=1)
    await harness.stub.SendAction(
        router_pb2.SendActionRequest(
            platform=events_pb2.FACEBOOK, page_id=PAGE, user_id=USER, action="typing_on"
        )
    )
    assert graph.state.send.sent[-1]["action"] == "typing_on"
    for bad, field in (
        (request(""), "idempotency_key"),
        (request("k", text=""), "text"),
        (
            request(
                "k",
                attachments=[router_pb2.OutgoingAttachment(type="gif", url="https://x.y/z")],
            ),
            "attachments[0].type",
        ),
        (request("k", text="x" * 2001), "text"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stub.SendMessage(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SendAction(
            router_pb2.SendActionRequest(
                platform=events_pb2.FACEBOOK, page_id=PAGE, user_id=USER, action="dance"
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await harness.count(OutboundSend) == 0
