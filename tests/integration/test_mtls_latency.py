"""DecryptToken latency over mutual TLS, measured against a real tokens process on PostgreSQL.

Run `pytest tests/integration/test_mtls_latency.py -s` to see the figures; the
test only fails on an order-of-magnitude regression.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagewire.kit.tls import generate_pki
from pagewire.proto import events_pb2, tokens_pb2, tokens_pb2_grpc
from tests.support.tokens import RING_A
from tests.support.waiting import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
WARMUP = 50
SEQUENTIAL = 1000
CONCURRENT_CALLS = 1000
CONCURRENCY = 8
TOKEN = "EAAGlatencyTOKENsecretVALUE0123456789abcdefXYZ"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_decrypt_token_latency_over_mtls(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = generate_pki(tmp_path / "tls", ("tokens", "router", "subscriptions"))
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAGEWIRE_")}
    env = {
        **base,
        **pki.env("tokens"),
        "PAGEWIRE_KEYRING": RING_A,
        "PAGEWIRE_DATABASE_URL": database_url,
        "PAGEWIRE_TOKENS_PORT": str(port),
        "PAGEWIRE_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.tokens",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    page = tokens_pb2.PageRef(platform=events_pb2.FACEBOOK, page_id="109384756201938")
    try:
        async with pki.security("subscriptions").channel(target, "tokens") as channel:

            async def serving() -> bool:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await wait_for(serving, timeout=30, what="tokens over mTLS")
            await tokens_pb2_grpc.TokensServiceStub(channel).PutToken(
                tokens_pb2.PutTokenRequest(page=page, token=TOKEN), timeout=5
            )
        async with pki.security("router").channel(target, "tokens") as channel:
            stub = tokens_pb2_grpc.TokensServiceStub(channel)
            request = tokens_pb2.DecryptTokenRequest(page=page)

            async def timed() -> float:
                start = time.perf_counter()
                reply = await stub.DecryptToken(request, timeout=5)
                elapsed = time.perf_counter() - start
                assert reply.token == TOKEN
                return elapsed * 1000

            for _ in range(WARMUP):
                await timed()
            sequential = [await timed() for _ in range(SEQUENTIAL)]

            async def worker(n: int) -> list[float]:
                return [await timed() for _ in range(n)]

            started = time.perf_counter()
            batches = await asyncio.gather(
                *(worker(CONCURRENT_CALLS // CONCURRENCY) for _ in range(CONCURRENCY))
            )
            wall = time.perf_counter() - started
            concurrent = [ms for batch in batches for ms in batch]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)

    report = {
        "rpc": "DecryptToken over mTLS (router certificate), tokens process on PostgreSQL,"
        " each call audited in the same transaction",
        "sequential": {
            "calls": SEQUENTIAL,
            "p50_ms": round(statistics.median(sequential), 3),
            "p99_ms": round(percentile(sequential, 0.99), 3),
        },
        f"concurrency_{CONCURRENCY}": {
            "calls": len(concurrent),
            "p50_ms": round(statistics.median(concurrent), 3),
            "p99_ms": round(percentile(concurrent, 0.99), 3),
            "calls_per_s": round(len(concurrent) / wall),
        },
    }
    with capsys.disabled():
        print("\nDecryptToken latency:", json.dumps(report, indent=2))
    assert report["sequential"]["p99_ms"] < 250
