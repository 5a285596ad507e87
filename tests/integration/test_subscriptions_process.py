"""Tokens and subscriptions as real processes, started by their composition roots."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagewire import fakegraph
from pagewire.kit.authz import Policy
from pagewire.kit.channels import open_channel
from pagewire.kit.grpcserver import start_server
from pagewire.proto import (
    events_pb2,
    router_pb2,
    router_pb2_grpc,
    subscriptions_pb2,
    subscriptions_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from services.tokens.vault import generate_keyring
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PAGE = "109384756201938"
TOKEN = "EAAGprocessTOKENsecret0123456789abcdefXYZ"


def _environ(extra: Mapping[str, str]) -> dict[str, str]:
    # The parent's PAGEWIRE_* settings must not leak into the child.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")}
    # Plaintext gRPC between these processes; mTLS is tested with the whole stack (tests/e2e).
    return {**base, "PAGEWIRE_LOG_LEVEL": "DEBUG", "PAGEWIRE_INSECURE_GRPC": "1", **extra}


@asynccontextmanager
async def process(module: str, environ: Mapping[str, str]) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        cwd=REPO,
        env=_environ(environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    handle = Process(proc)
    try:
        yield handle
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class Process:
    """A running service process; `stop()` sends SIGTERM and returns its output."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(self.proc.communicate(), 20)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()


async def serving(port: int, service: str, proc: Process) -> None:
    channel = open_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)

    async def check() -> bool:
        if proc.proc.returncode is not None:
            raise AssertionError(f"process exited with {proc.proc.returncode}")
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    try:
        await wait_for(check, timeout=30, what=f"{service} to serve")
    finally:
        await channel.close()


class Router(router_pb2_grpc.RouterServiceServicer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def RouteParked(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(request.page_id)
        return router_pb2.RouteParkedResponse(routed=1)

    async def PageDisconnected(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(f"-{request.page_id}")
        return router_pb2.PageDisconnectedResponse(applied=True)


async def test_connect_and_disconnect_through_real_processes(
    database_url: str, tmp_path: Path
) -> None:
    keyring = tmp_path / "keyring.json"
    keyring.write_text(generate_keyring())
    keyring.chmod(0o600)
    graph = await fakegraph.start()
    router = Router()
    router_service = await start_server(
        names=[router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name],
        register=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(router, server),
        access=Policy.open([router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name]),
        port=0,
    )
    tokens_port, subs_port = free_port(), free_port()
    common = {"PAGEWIRE_DATABASE_URL": database_url, "PAGEWIRE_SHUTDOWN_DRAIN_S": "0"}
    try:
        async with (
            process(
                "services.tokens",
                {
                    **common,
                    "PAGEWIRE_KEYRING_FILE": str(keyring),
                    "PAGEWIRE_TOKENS_PORT": str(tokens_port),
                },
            ) as tokens,
            process(
                "services.subscriptions",
                {
                    **common,
                    "PAGEWIRE_SUBSCRIPTIONS_PORT": str(subs_port),
                    "PAGEWIRE_TOKENS_ADDR": f"127.0.0.1:{tokens_port}",
                    "PAGEWIRE_ROUTER_ADDR": f"127.0.0.1:{router_service.port}",
                    "PAGEWIRE_GRAPH_URL": graph.url,
                    "PAGEWIRE_INSTAGRAM_GRAPH_URL": graph.url,
                },
            ) as subs,
        ):
            await serving(tokens_port, "pagewire.tokens.v1.TokensService", tokens)
            await serving(subs_port, "pagewire.subscriptions.v1.SubscriptionsService", subs)
            channel = open_channel(f"127.0.0.1:{subs_port}")
            tokens_channel = open_channel(f"127.0.0.1:{tokens_port}")
            try:
                stub = subscriptions_pb2_grpc.SubscriptionsServiceStub(channel)
                connected = await stub.ConnectPage(
                    subscriptions_pb2.ConnectPageRequest(
                        platform=events_pb2.FACEBOOK,
                        page_id=PAGE,
                        account_id="acme",
                        page_token=TOKEN,
                    ),
                    timeout=10,
                )
                assert connected.page.status == subscriptions_pb2.SUBSCRIBED
                assert connected.parked_routed == 1 and router.calls == [PAGE]
                (post,) = graph.state.requests_to("POST")
                assert post["bearer_token"] == TOKEN and post["query"] == {}

                status = await tokens_pb2_grpc.TokensServiceStub(tokens_channel).GetTokenStatus(
                    tokens_pb2.GetTokenStatusRequest(
                        page=tokens_pb2.PageRef(platform=events_pb2.FACEBOOK, page_id=PAGE)
                    ),
                    timeout=10,
                )
                assert status.status == tokens_pb2.ACTIVE

                disconnected = await stub.DisconnectPage(
                    subscriptions_pb2.DisconnectPageRequest(
                        platform=events_pb2.FACEBOOK, page_id=PAGE
                    ),
                    timeout=10,
                )
                assert disconnected.unsubscribed
                (delete,) = graph.state.requests_to("DELETE")
                assert delete["bearer_token"] == TOKEN
            finally:
                await channel.close()
                await tokens_channel.close()

            outputs = [await subs.stop(), await tokens.stop()]
    finally:
        await router_service.stop(0)
        await graph.stop()

    for returncode, out, err in outputs:
        assert returncode == 0, err
        assert TOKEN not in out and TOKEN not in err
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert any(line["msg"] == "stopped" for line in lines)


async def test_tokens_refuses_a_malformed_keyring() -> None:
    async with process(
        "services.tokens", {"PAGEWIRE_KEYRING": json.dumps({"primary": "k", "keys": {}})}
    ) as tokens:
        _out, err = await asyncio.wait_for(tokens.proc.communicate(), 30)
    assert tokens.proc.returncode == 2
    assert "PAGEWIRE_KEYRING" in err.decode() and len(err.strip().splitlines()) == 1


async def test_subscriptions_refuses_a_bad_graph_version() -> None:
    async with process("services.subscriptions", {"PAGEWIRE_GRAPH_VERSION": "latest"}) as subs:
        _out, err = await asyncio.wait_for(subs.proc.communicate(), 30)
    assert subs.proc.returncode == 2
    assert b"PAGEWIRE_GRAPH_VERSION" in err
