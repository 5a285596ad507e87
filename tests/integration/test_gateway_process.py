"""`python -m services.gateway` as a real process: refuses bad settings, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.gateway.signature import sign
from tests.support.waiting import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
APP_SECRET = "proc_app_secret_7d2f4a9c1e6b8035"
VERIFY_TOKEN = "proc-verify-3b9e51c0a7d4"


def clean_env(**settings: str) -> dict[str, str]:
    """The test's environment without any PAGEWIRE_ setting, plus `settings`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")}
    environ.update({f"PAGEWIRE_{k}": v for k, v in settings.items()})
    return environ


def run_gateway(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_refuses_to_start_without_app_secret() -> None:
    result = run_gateway(clean_env(VERIFY_TOKEN=VERIFY_TOKEN))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PAGEWIRE_APP_SECRET" in lines[0]
    assert VERIFY_TOKEN not in result.stderr + result.stdout


def test_refuses_to_start_without_verify_token() -> None:
    result = run_gateway(clean_env(APP_SECRET=APP_SECRET))
    assert result.returncode == 2
    assert "PAGEWIRE_VERIFY_TOKEN" in result.stderr
    assert APP_SECRET not in result.stderr + result.stdout


def test_refuses_a_placeholder_app_secret() -> None:
    result = run_gateway(clean_env(APP_SECRET="changeme", VERIFY_TOKEN=VERIFY_TOKEN))
    assert result.returncode == 2
    assert "PAGEWIRE_APP_SECRET" in result.stderr and "placeholder" in result.stderr
    assert VERIFY_TOKEN not in result.stderr + result.stdout


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    secret_file = tmp_path / "app_secret"
    secret_file.write_text(APP_SECRET + "\n")
    environ = clean_env(
        APP_SECRET_FILE=str(secret_file),
        VERIFY_TOKEN=VERIFY_TOKEN,
        GATEWAY_PORT=str(port),
        ROUTER_ADDR=f"127.0.0.1:{free_port()}",  # nothing listens: the router is down
        INSECURE_GRPC="1",  # no router to talk to; mTLS is tested with the whole stack
        GATEWAY_INGEST_TIMEOUT_S="1",
    )
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway"],
            cwd=REPO,
            env=environ,
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, port, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def test_serves_then_stops_cleanly_on_sigterm(
    gateway_process: tuple[subprocess.Popen[bytes], int, Path], fixtures_dir: Path
) -> None:
    proc, port, out = gateway_process
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:

        async def healthy() -> bool:
            assert proc.poll() is None, out.read_text()
            return (await client.get("/healthz")).status_code == 200

        await wait_for(healthy, timeout=30, what="gateway process /healthz")
        assert (await client.get("/readyz")).status_code == 503  # no router
        signed = {"x-hub-signature-256": sign(raw, APP_SECRET.encode())}
        assert (
            await client.post("/webhooks/facebook", content=raw, headers=signed)
        ).status_code == (503)
        unsigned = await client.post("/webhooks/facebook", content=raw)
        assert unsigned.status_code == 401
        params = {"hub.mode": "subscribe", "hub.challenge": "7", "hub.verify_token": VERIFY_TOKEN}
        assert (await client.get("/webhooks/facebook", params=params)).text == "7"

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0

    output = out.read_text()
    lines = [json.loads(line) for line in output.splitlines()]  # every line is a JSON object
    assert all(line["service"] == "gateway" for line in lines)
    messages = [line["msg"] for line in lines]
    assert "gateway starting" in messages and "gateway stopped" in messages
    starting = next(line for line in lines if line["msg"] == "gateway starting")
    assert starting["header_timeout_s"] == 10.0 and starting["body_timeout_s"] == 5.0
    assert starting["max_concurrency"] == 128 and starting["max_items"] == 1000
    assert any(
        line["msg"] == "webhook signature rejected" and line["reason"] == "missing"
        for line in lines
    )
    assert any(line["msg"] == "router ingest failed" for line in lines)
    for secret in (APP_SECRET, VERIFY_TOKEN, "Medell"):
        assert secret not in output
