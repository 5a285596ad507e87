"""A router and a gateway as real processes, for tests that take PostgreSQL or Redis away.

Subscriptions is the in-process stand-in (the page is connected to `acme`), so
an outage of the router's own dependencies is all that can fail a POST.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.signature import sign
from tests.support.fakes import FakeSubscriptions, serve_fake_subscriptions
from tests.support.routerharness import PAGE, USER
from tests.support.stack import APP_SECRET, Proc, Stack

ROUTER_SERVICE = "pagewire.router.v1.RouterService"


def webhook(mid: str, text: str, *, page_id: str = PAGE, user_id: str = USER) -> bytes:
    """A signed-to-be Messenger body carrying one message."""
    now = int(time.time() * 1000)
    item = {
        "sender": {"id": user_id},
        "recipient": {"id": page_id},
        "timestamp": now,
        "message": {"mid": mid, "text": text},
    }
    return json.dumps(
        {"object": "page", "entry": [{"id": page_id, "time": now, "messaging": [item]}]}
    ).encode()


async def post(stack: Stack, body: bytes, timeout: float = 10) -> httpx.Response:
    """POSTs `body` to the gateway, signed as Meta signs it."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=timeout) as client:
        return await client.post(
            "/webhooks/facebook",
            content=body,
            headers={"X-Hub-Signature-256": sign(body, APP_SECRET.encode())},
        )


async def readyz(stack: Stack) -> int:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=5) as client:
        return (await client.get("/readyz")).status_code


async def router_status(stack: Stack, service: str = ROUTER_SERVICE) -> int:
    """The router's health status for `service` (`""`: the overall one)."""
    async with stack.channel("router") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return reply.status


def log_lines(proc: Proc) -> list[dict[str, object]]:
    """The JSON lines a process logged (anything else it printed is skipped)."""
    lines = []
    for raw in proc.log.read_text(errors="replace").splitlines():
        try:
            parsed = json.loads(raw)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            lines.append(parsed)
    return lines


@asynccontextmanager
async def router_and_gateway(
    workdir: Path,
    *,
    database_url: str,
    redis_url: str | None,
    redis_prefix: str,
    **router_env: str,
) -> AsyncIterator[Stack]:
    """Router and gateway processes (plaintext gRPC) with the stand-in subscriptions."""
    fake = FakeSubscriptions()
    fake.connect(PAGE, "acme")
    subscriptions = await serve_fake_subscriptions(fake)
    stack = Stack.create(
        workdir,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        graph_url="http://127.0.0.1:9",
        keyring="{}",
    )
    stack.env["PAGEWIRE_SUBSCRIPTIONS_ADDR"] = f"127.0.0.1:{subscriptions.port}"
    # Contact profiles would call tokens and Graph, neither of which runs here.
    stack.env["PAGEWIRE_PROFILE_REFRESH_S"] = "0"
    try:
        await stack.start("router", **router_env)
        await stack.start("gateway")
        yield stack
    finally:
        await stack.stop_all()
        await subscriptions.stop(grace=0)
