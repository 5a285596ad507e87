"""`python -m services.tokens` refuses to start without a usable key ring or TLS, and says why."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagewire.kit.tls import DevPki, generate_pki
from pagewire.proto import events_pb2, tokens_pb2, tokens_pb2_grpc
from tests.support.tokens import RING_A
from tests.support.waiting import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def environ(**settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")}
    return {**base, **{f"PAGEWIRE_{k}": v for k, v in settings.items()}}


async def start(env: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.tokens",
        cwd=REPO,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def refusal(env: Mapping[str, str]) -> str:
    """The one line a refused start prints; the exit code is 2."""
    proc = await start(env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, (out, err)
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


async def test_refuses_to_start_without_a_key_ring() -> None:
    line = await refusal(environ(INSECURE_GRPC="1"))
    assert line == (
        "pagewire tokens: configuration error: PAGEWIRE_KEYRING (or PAGEWIRE_KEYRING_FILE)"
        " is required"
    )


async def test_refuses_a_missing_or_empty_key_ring_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "keyring.json"
    line = await refusal(environ(INSECURE_GRPC="1", KEYRING_FILE=str(missing)))
    assert "PAGEWIRE_KEYRING_FILE" in line and str(missing) in line and "No such file" in line
    empty = tmp_path / "keyring.json"
    empty.write_text("")
    line = await refusal(environ(INSECURE_GRPC="1", KEYRING_FILE=str(empty)))
    assert "PAGEWIRE_KEYRING_FILE" in line and "empty" in line


async def test_refuses_to_start_without_tls_or_the_explicit_opt_out() -> None:
    line = await refusal(environ(KEYRING=RING_A))
    assert "PAGEWIRE_TLS_CA_FILE is required" in line and "PAGEWIRE_INSECURE_GRPC=1" in line


async def test_refuses_when_the_rotated_primary_left_the_key_ring(database_url: str) -> None:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE tokens.key_ring_state SET primary_key_id = 'key-b' WHERE id = 1")
    line = await refusal(environ(INSECURE_GRPC="1", KEYRING=RING_A, DATABASE_URL=database_url))
    assert "PAGEWIRE_KEYRING" in line and "'key-b'" in line and "not in the key ring" in line


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return generate_pki(tmp_path_factory.mktemp("pki"), ("tokens", "router", "gateway", "cli"))


async def test_serves_over_mutual_tls_only(database_url: str, pki: DevPki) -> None:
    port = free_port()
    env = environ(KEYRING=RING_A, DATABASE_URL=database_url, TOKENS_PORT=str(port))
    proc = await start({**env, **pki.env("tokens")})
    target = f"127.0.0.1:{port}"
    request = tokens_pb2.DecryptTokenRequest(
        page=tokens_pb2.PageRef(platform=events_pb2.FACEBOOK, page_id="42")
    )
    try:
        async with pki.security("cli").channel(target, "tokens") as channel:

            async def serving() -> bool:
                assert proc.returncode is None, await proc.stderr.read()  # type: ignore[union-attr]
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await wait_for(serving, timeout=30, what="tokens over mTLS")
        async with pki.security("gateway").channel(target, "tokens") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await tokens_pb2_grpc.TokensServiceStub(channel).DecryptToken(request, timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with pki.security("router").channel(target, "tokens") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as allowed:
                await tokens_pb2_grpc.TokensServiceStub(channel).DecryptToken(request, timeout=5)
        assert allowed.value.code() == grpc.StatusCode.NOT_FOUND  # allowed, nothing stored
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await tokens_pb2_grpc.TokensServiceStub(channel).DecryptToken(request, timeout=5)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    tls = next(line for line in lines if line["msg"] == "mutual TLS")
    assert tls["identity"] == "tokens"
    assert any(line["msg"] == "call refused" and line["caller"] == "gateway" for line in lines)


async def test_insecure_grpc_warns_at_start(database_url: str) -> None:
    port = free_port()
    proc = await start(
        environ(INSECURE_GRPC="1", KEYRING=RING_A, DATABASE_URL=database_url, TOKENS_PORT=str(port))
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            async def serving() -> bool:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await wait_for(serving, timeout=30, what="tokens without TLS")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _err = await asyncio.wait_for(proc.communicate(), 30)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    warnings = [line for line in lines if line["level"] == "warning"]
    assert any("PAGEWIRE_INSECURE_GRPC=1" in line["msg"] for line in warnings)


async def test_refuses_an_unmigrated_schema(database_url: str) -> None:
    from alembic import command

    from pagewire.kit import migrate

    command.downgrade(migrate._config("tokens", database_url), "0001")
    line = await refusal(environ(INSECURE_GRPC="1", KEYRING=RING_A, DATABASE_URL=database_url))
    assert "pagewire db upgrade --service tokens" in line
