"""Replying through real processes: a send and its echo are one message, early or late;
sends survive a tokens restart and a router crash without ever reaching Graph twice."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import grpc
import httpx
import pytest

from pagewire import fakegraph
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from tests.e2e.conftest import cli, connect, query, sign
from tests.support.stack import APP_SECRET, Stack
from tests.support.waiting import free_port, wait_for

PAGE = "109384756201938"
USER = "7294015836620194"


async def person_writes(stack: Stack, mid: str = "m_fresh_inbound") -> None:
    now = int(time.time() * 1000)
    body = json.dumps(
        {
            "object": "page",
            "entry": [
                {
                    "id": PAGE,
                    "time": now,
                    "messaging": [
                        {
                            "sender": {"id": USER},
                            "recipient": {"id": PAGE},
                            "timestamp": now,
                            "message": {"mid": mid, "text": "¿Tienen talla 38?"},
                        }
                    ],
                }
            ],
        }
    ).encode()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{stack.gateway_url}/webhooks/facebook",
            content=body,
            headers={"X-Hub-Signature-256": sign(body)},
        )
    assert response.status_code == 200


async def echo_to(graph: fakegraph.FakeGraph, stack: Stack, mode: str) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{graph.url}/_fake/echo",
            json={"gateway_url": stack.gateway_url, "app_secret": APP_SECRET, "mode": mode},
        )
    assert answer.status_code == 200


@pytest.mark.parametrize("mode", ["late", "early"])
async def test_a_send_and_its_echo_are_one_message(
    stack: Stack, graph: fakegraph.FakeGraph, database_url: str, mode: str
) -> None:
    await connect(stack, PAGE)
    await person_writes(stack)
    await echo_to(graph, stack, mode)
    sent = await cli(
        stack, "messages", "send", "--page-id", PAGE, "--user", USER, "--text", "¡Sí! 🙂", "--json"
    )
    reply = json.loads(sent.stdout)
    assert reply["state"] == "ACCEPTED"
    (mid,) = reply["mids"]
    # The echo is delivered (maybe after a 503 while the send held the lock) and stored once.
    await wait_for(lambda: 200 in graph.state.send.echo_statuses, timeout=20, what="the echo")
    await wait_for(
        lambda: (
            query(database_url, "SELECT count(*) FROM router.events WHERE event_id = %s", mid)[0][0]
            == 1
        ),
        what="the echo in the event log",
    )
    listed = json.loads((await cli(stack, "messages", "list", "--page-id", PAGE, "--json")).stdout)
    outgoing = [m for m in listed if m["direction"] == "OUTBOUND"]
    assert [(m["mid"], m["text"]) for m in outgoing] == [(mid, "¡Sí! 🙂")]


async def test_sends_survive_tokens_restart_and_router_crash(
    stack: Stack, graph: fakegraph.FakeGraph
) -> None:
    await connect(stack, PAGE)
    await person_writes(stack)
    second = await stack.start("router", name="router2", PAGEWIRE_ROUTER_PORT=str(free_port()))
    ports = [stack.ports["router"], second.port]
    outcomes: dict[str, str] = {}

    async def send(n: int) -> None:
        key = f"chaos-{n}"
        request = router_pb2.SendMessageRequest(
            platform=events_pb2.FACEBOOK,
            page_id=PAGE,
            user_id=USER,
            text=f"#{n}",
            idempotency_key=key,
        )
        deadline = time.monotonic() + 60
        attempt = 0
        while time.monotonic() < deadline:
            port = ports[(n + attempt) % 2]
            attempt += 1
            async with stack.channel("router", port=port) as channel:
                try:
                    reply = await router_pb2_grpc.RouterServiceStub(channel).SendMessage(
                        request, timeout=10
                    )
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)  # a client's retry pause, not a test wait
                    continue
            outcomes[key] = router_pb2.SendState.Name(reply.state)
            return

    sends = [asyncio.ensure_future(send(n)) for n in range(200)]
    await wait_for(lambda: len(graph.state.send.sent) >= 40, timeout=30, what="sends under way")
    await stack.stop("tokens")
    await stack.start("tokens")
    await wait_for(lambda: len(graph.state.send.sent) >= 100, timeout=30, what="more sends")
    await stack.kill("router2")
    await asyncio.gather(*sends)

    assert len(outcomes) == 200
    assert set(outcomes.values()) <= {"ACCEPTED", "REJECTED", "UNKNOWN"}
    reached = Counter(s["message"]["metadata"] for s in graph.state.send.sent)
    assert max(reached.values()) == 1  # no key reached Graph twice
    for key, state in outcomes.items():
        if state == "ACCEPTED":
            assert reached[f"pagewire:{key}"] == 1
