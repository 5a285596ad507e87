"""The internet-facing gateway's limits over real HTTP, against uvicorn on a free port.

Slow clients (headers and bodies trickled over raw sockets), the in-flight limit, the
item cap, the path deciding the platform, and `pagewire webhook send` keeping the app
secret off the command line. The injected ingest stands in for the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from pagewire import cli
from pagewire.proto import events_pb2, router_pb2
from services.gateway.signature import sign
from tests.integration.test_gateway_http import (
    APP_SECRET,
    FB,
    IG,
    VERIFY_TOKEN,
    gateway_env,
    post,
    running_gateway,
)
from tests.support.waiting import free_port, wait_for

IG_SECRET = "ig_secret_" + secrets.token_hex(12)
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
MAX_ITEMS = 1000
# Closing a connection may lag its deadline by a scheduling tick, never by seconds;
# uvicorn's own keep-alive timer (5 s) would only close a quiet connection at 5 s.
MARGIN_S = 1.5
# A slow client's pace: each piece is a new chance for a timer that restarts on data
# to restart (uvicorn's keep-alive timer does). Pacing the attack, not a wait.
TRICKLE_EVERY_S = 0.05


@dataclass
class Ingest:
    """The router stand-in: records each call; while `gate` is set, calls wait for it."""

    calls: list[router_pb2.IngestRequest] = field(default_factory=list)
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: router_pb2.IngestRequest, timeout: float) -> object:
        self.calls.append(request)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return router_pb2.IngestResponse(stored=len(request.events))


@pytest.fixture(scope="module")
def ingest() -> Ingest:
    return Ingest()


@pytest.fixture(autouse=True)
def fresh_ingest(ingest: Ingest) -> Iterator[None]:
    ingest.calls.clear()
    ingest.gate = None
    ingest.entered = asyncio.Event()
    yield
    if ingest.gate is not None:
        ingest.gate.set()  # frees a POST a failed test left waiting


@pytest.fixture(scope="module")
async def gateway(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    """One process's limits, made small enough to reach in a test."""
    environ = gateway_env(
        free_port(),
        INSTAGRAM_APP_SECRET=IG_SECRET,
        GATEWAY_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        GATEWAY_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        GATEWAY_MAX_CONCURRENCY="1",
        GATEWAY_MAX_ITEMS=str(MAX_ITEMS),
        GATEWAY_MAX_BODY_BYTES=str(1_048_576),
        # Room for a POST held in ingest while the test sends the next one.
        GATEWAY_INGEST_TIMEOUT_S="4.5",
    )
    async with running_gateway(environ, ingest) as client:
        yield client


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def webhooks(outcome: str, platform: str = "facebook") -> float:
    return metric("pagewire_webhooks_received_total", platform=platform, outcome=outcome)


# ---------------------------------------------------------------- raw connections


@contextlib.asynccontextmanager
async def connection(
    client: httpx.AsyncClient,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    url = client.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, deadline_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as
    closed: it may come when the client was still writing)."""
    data = b""
    async with asyncio.timeout(deadline_s):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def trickle(writer: asyncio.StreamWriter, data: bytes, piece: int = 1) -> None:
    """Sends `data` a few bytes at a time until it is sent or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
            await writer.drain()
            await asyncio.sleep(TRICKLE_EVERY_S)


@contextlib.asynccontextmanager
async def trickling(
    writer: asyncio.StreamWriter, data: bytes, piece: int = 1
) -> AsyncIterator[None]:
    task = asyncio.create_task(trickle(writer, data, piece))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def request_head(path: str, body: bytes, secret: str = APP_SECRET) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Hub-Signature-256: {sign(body, secret.encode())}\r\n\r\n"
    ).encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def assert_closed_on_time(elapsed: float, timeout: float) -> None:
    assert timeout * 0.9 <= elapsed < timeout + MARGIN_S, elapsed


# ---------------------------------------------------------------- slowloris: headers


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /webhooks/facebook HTTP/1.1\r\nHost: gateway\r\nContent-Ty"],
    ids=["nothing", "half the headers"],
)
async def test_a_connection_without_complete_headers_is_closed(
    gateway: httpx.AsyncClient, sent: bytes
) -> None:
    async with connection(gateway) as (reader, writer):
        started = time.monotonic()
        writer.write(sent)
        await writer.drain()
        answer = await until_closed(reader)
        elapsed = time.monotonic() - started
    assert answer == b""  # no request, so no answer: the connection is just closed
    assert_closed_on_time(elapsed, HEADER_TIMEOUT_S)


async def test_headers_trickled_a_byte_at_a_time_do_not_hold_the_connection(
    gateway: httpx.AsyncClient,
) -> None:
    # Long enough to outlast the deadline many times over at this pace.
    head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Pad: " + b"a" * 1000
    async with connection(gateway) as (reader, writer):
        started = time.monotonic()
        async with trickling(writer, head):
            answer = await until_closed(reader)
        elapsed = time.monotonic() - started
    assert answer == b""
    assert_closed_on_time(elapsed, HEADER_TIMEOUT_S)


async def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(
    gateway: httpx.AsyncClient,
) -> None:
    async with connection(gateway) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status_of(head) == 200 and b"connection: close" not in head.lower()
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        assert json.loads(await reader.readexactly(length)) == {"status": "ok"}
        # The timer restarted with the response: trickle the second request's headers.
        started = time.monotonic()
        async with trickling(writer, b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Pad: aaaaaaaa"):
            answer = await until_closed(reader)
        elapsed = time.monotonic() - started
    assert answer == b""
    assert_closed_on_time(elapsed, HEADER_TIMEOUT_S)


async def test_a_pipelined_request_is_not_cut_by_the_header_deadline(
    gateway: httpx.AsyncClient, ingest: Ingest, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    ingest.gate = asyncio.Event()
    async with connection(gateway) as (reader, writer):
        # Two requests in one write: the POST waits in uvicorn's pipeline for the probe.
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n" + request_head(FB, raw) + raw
        )
        await writer.drain()
        await wait_for(ingest.entered.is_set, timeout=5, what="the pipelined POST in ingest")
        # Its headers were complete long ago, so holding it past the header deadline must
        # not close the connection. Time itself is what is tested here, not awaited for.
        await asyncio.sleep(HEADER_TIMEOUT_S * 2)
        ingest.gate.set()
        answer = await until_closed(reader)  # idle after the POST's answer: closed on time
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2, answer[:400]
    assert answer.endswith(b'{"status":"ok","events":1}')


async def test_a_prompt_client_keeps_its_connection_across_requests(
    gateway: httpx.AsyncClient, ingest: Ingest, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    async with httpx.AsyncClient(base_url=str(gateway.base_url)) as client:
        ports = []
        for _ in range(3):
            response = await post(client, raw)
            assert response.status_code == 200
            assert response.headers.get("connection") != "close"
            ports.append(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(set(ports)) == 1  # one connection served all three
    assert len(ingest.calls) == 3


# ---------------------------------------------------------------- slowloris: the body


async def test_a_trickled_body_is_408_and_the_connection_closed(
    gateway: httpx.AsyncClient, ingest: Ingest, fixtures_dir: Path
) -> None:
    body = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    before = webhooks("body_timeout")
    async with connection(gateway) as (reader, writer):
        writer.write(request_head(FB, body))
        await writer.drain()
        started = time.monotonic()
        # Four bytes every 50 ms: the whole body would take seconds.
        async with trickling(writer, body, piece=4):
            answer = await until_closed(reader)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408, answer[:200]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "body not received in time"}
    assert_closed_on_time(elapsed, BODY_TIMEOUT_S)
    assert ingest.calls == []
    assert webhooks("body_timeout") == before + 1


async def test_a_body_that_stops_coming_is_408(
    gateway: httpx.AsyncClient, ingest: Ingest, fixtures_dir: Path
) -> None:
    body = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    async with connection(gateway) as (reader, writer):
        writer.write(request_head(FB, body) + body[: len(body) // 2])
        await writer.drain()
        started = time.monotonic()
        answer = await until_closed(reader)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408
    assert_closed_on_time(elapsed, BODY_TIMEOUT_S)
    assert ingest.calls == []


# ---------------------------------------------------------------- the in-flight limit


async def test_a_post_beyond_the_limit_is_503_with_retry_after_until_a_slot_frees(
    gateway: httpx.AsyncClient, ingest: Ingest, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    before = webhooks("overloaded")
    ingest.gate = asyncio.Event()
    first = asyncio.create_task(post(gateway, raw))
    try:
        await wait_for(ingest.entered.is_set, timeout=5, what="the first POST inside ingest")

        async with httpx.AsyncClient(base_url=str(gateway.base_url), timeout=5) as other:
            refused = await post(other, raw, IG, secret=IG_SECRET)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["connection"] == "close"
        assert refused.json()["error"] == "overloaded"

        # Refused before its body is read: a body that never comes still gets the 503
        # at once, not a 408 after the body timeout.
        async with connection(gateway) as (reader, writer):
            started = time.monotonic()
            writer.write(request_head(FB, raw))
            await writer.drain()
            answer = await until_closed(reader)
            assert time.monotonic() - started < BODY_TIMEOUT_S
        assert status_of(answer) == 503 and b"\r\nretry-after: " in answer.lower()

        # Probes, scrapes and the handshake are never limited.
        async with httpx.AsyncClient(base_url=str(gateway.base_url), timeout=5) as other:
            assert (await other.get("/healthz")).status_code == 200
            assert (await other.get("/readyz")).status_code == 200
            assert (await other.get("/metrics")).status_code == 200
            params = {
                "hub.mode": "subscribe",
                "hub.challenge": "9",
                "hub.verify_token": VERIFY_TOKEN,
            }
            assert (await other.get(FB, params=params)).text == "9"

        assert len(ingest.calls) == 1
        assert webhooks("overloaded") == before + 1
        assert webhooks("overloaded", "instagram") >= 1
    finally:
        ingest.gate.set()
    assert (await first).status_code == 200
    # The slot is free again.
    assert (await post(gateway, raw)).status_code == 200
    assert (await post(gateway, raw)).status_code == 200
    assert len(ingest.calls) == 3


# ---------------------------------------------------------------- the item cap


def empty_items_body(size: int) -> tuple[bytes, int]:
    """A valid envelope of about `size` bytes whose one entry holds `{}` items only."""
    head = b'{"object":"page","entry":[{"id":"109384756201938","time":1,"messaging":['
    tail = b"]}]}"
    count = (size - len(head) - len(tail) + 1) // 3
    return head + b",".join([b"{}"] * count) + tail, count


async def test_more_items_than_the_cap_are_413_before_any_normalizing(
    gateway: httpx.AsyncClient, ingest: Ingest
) -> None:
    body, count = empty_items_body(1_048_576)
    assert len(body) <= 1_048_576 and count > 300_000
    before = webhooks("too_many_items")
    started = time.perf_counter()
    response = await post(gateway, body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 413
    assert response.json() == {
        "error": "too many items",
        "detail": f"more than {MAX_ITEMS} items (entries, messaging, standby and changes)",
    }
    # Normalizing these took seconds of CPU; refusing them is a parse.
    assert elapsed < 1.0, elapsed
    assert ingest.calls == []
    assert webhooks("too_many_items") == before + 1


async def test_the_cap_itself_is_accepted(gateway: httpx.AsyncClient, ingest: Ingest) -> None:
    # One entry and its items: exactly the cap.
    at_cap = json.dumps(
        {
            "object": "page",
            "entry": [{"id": "109384756201938", "messaging": [{}] * (MAX_ITEMS - 1)}],
        }
    ).encode()
    response = await post(gateway, at_cap)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "events": MAX_ITEMS - 1}
    [request] = ingest.calls
    assert len(request.events) == MAX_ITEMS - 1
    over = json.dumps(
        {"object": "page", "entry": [{"id": "109384756201938", "messaging": [{}] * MAX_ITEMS}]}
    ).encode()
    assert (await post(gateway, over)).status_code == 413
    assert len(ingest.calls) == 1


# ---------------------------------------------------------------- the path decides the platform


async def test_an_object_that_is_not_the_paths_is_400(
    gateway: httpx.AsyncClient, ingest: Ingest, fixtures_dir: Path
) -> None:
    instagram = (fixtures_dir / "meta" / "12_instagram_text.json").read_bytes()
    messenger = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    before = webhooks("wrong_object")
    # Signed with the Messenger secret, on the Messenger path, carrying Instagram events.
    response = await post(gateway, instagram, FB, secret=APP_SECRET)
    assert response.status_code == 400
    assert response.json() == {
        "error": "wrong object",
        "detail": '/webhooks/facebook accepts only "object": "page"',
    }
    response = await post(gateway, messenger, IG, secret=IG_SECRET)
    assert response.status_code == 400
    assert response.json()["detail"] == '/webhooks/instagram accepts only "object": "instagram"'
    assert ingest.calls == []
    assert webhooks("wrong_object") == before + 1
    # On their own paths both are taken, each with its path's platform.
    assert (await post(gateway, instagram, IG, secret=IG_SECRET)).status_code == 200
    assert (await post(gateway, messenger, FB, secret=APP_SECRET)).status_code == 200
    assert [r.events[0].platform for r in ingest.calls] == [
        events_pb2.INSTAGRAM,
        events_pb2.FACEBOOK,
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'{"object":"instagram","object":"page","entry":[]}',
        b'{"object":"page","object":"instagram","entry":[]}',
        b'{"object":"page","entry":[],"object":"page"}',
        b'{"obj\\u0065ct":"instagram","object":"page","entry":[]}',
    ],
)
async def test_a_duplicate_object_key_is_400(
    gateway: httpx.AsyncClient, ingest: Ingest, body: bytes
) -> None:
    item = (
        b'{"id":"109384756201938","messaging":[{"sender":{"id":"7294015836620194"},'
        b'"recipient":{"id":"109384756201938"},"timestamp":1778163045000,'
        b'"message":{"mid":"m_dup","text":"hi"}}]}'
    )
    body = body.replace(b'"entry":[]', b'"entry":[' + item + b"]")
    response = await post(gateway, body, FB)
    assert response.status_code == 400
    assert response.json() == {
        "error": "malformed body",
        "detail": 'top-level key "object" appears twice',
    }
    assert ingest.calls == []


# ---------------------------------------------------------------- webhook send's secret


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No secret anywhere the CLI looks; returns the var/ it would read the dev secret from."""
    for name in (
        "APP_SECRET",
        "APP_SECRET_FILE",
        "INSTAGRAM_APP_SECRET",
        "INSTAGRAM_APP_SECRET_FILE",
        "GATEWAY_URL",
    ):
        monkeypatch.delenv(f"PAGEWIRE_{name}", raising=False)
    var = tmp_path / "var"
    var.mkdir()
    monkeypatch.setenv("PAGEWIRE_VAR_DIR", str(var))
    return var


async def webhook_send(gateway: httpx.AsyncClient, body: Path, *args: str) -> int:
    """`pagewire webhook send` in a thread: its HTTP client blocks, and the server runs here."""
    argv = ["webhook", "send", str(body), "--url", str(gateway.base_url), *args]
    return await asyncio.to_thread(cli.main, argv)


def secret_file(tmp_path: Path, value: str) -> str:
    path = tmp_path / f"secret-{secrets.token_hex(3)}"
    path.write_text(value + "\n")
    return str(path)


async def test_webhook_send_signs_with_the_secret_file(
    gateway: httpx.AsyncClient,
    ingest: Ingest,
    fixtures_dir: Path,
    tmp_path: Path,
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    messenger = fixtures_dir / "meta" / "01_text_message.json"
    instagram = fixtures_dir / "meta" / "12_instagram_text.json"
    assert (
        await webhook_send(gateway, messenger, "--secret-file", secret_file(tmp_path, APP_SECRET))
        == 0
    )
    assert (
        await webhook_send(gateway, instagram, "--secret-file", secret_file(tmp_path, IG_SECRET))
        == 0
    )
    assert [r.events[0].platform for r in ingest.calls] == [
        events_pb2.FACEBOOK,
        events_pb2.INSTAGRAM,
    ]
    assert capsys.readouterr().out.count('200 {"status":"ok","events":1}') == 2
    # A wrong secret is the gateway's 401, said plainly.
    assert (
        await webhook_send(
            gateway, messenger, "--secret-file", secret_file(tmp_path, "not_it_0123456789")
        )
        == 1
    )
    assert "gateway answered 401" in capsys.readouterr().err
    assert len(ingest.calls) == 2


@pytest.mark.parametrize("argv", [["--secret", "s3cr3t-on-argv"], ["--secret=s3cr3t-on-argv"]])
async def test_webhook_send_refuses_a_secret_on_the_command_line(
    gateway: httpx.AsyncClient,
    ingest: Ingest,
    fixtures_dir: Path,
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        await webhook_send(gateway, fixtures_dir / "meta" / "01_text_message.json", *argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--secret-file" in err and "s3cr3t-on-argv" not in err
    assert ingest.calls == []


async def test_webhook_send_falls_back_to_the_environment_then_var(
    gateway: httpx.AsyncClient,
    ingest: Ingest,
    fixtures_dir: Path,
    tmp_path: Path,
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    messenger = fixtures_dir / "meta" / "01_text_message.json"
    instagram = fixtures_dir / "meta" / "12_instagram_text.json"

    # Nothing anywhere: a clear error naming every place, and nothing sent.
    assert await webhook_send(gateway, messenger) == 2
    err = capsys.readouterr().err
    assert "--secret-file" in err and "PAGEWIRE_APP_SECRET" in err and "make run" in err

    # The dev secret `make run` writes.
    (cli_env / "app_secret").write_text(APP_SECRET)
    assert await webhook_send(gateway, messenger) == 0

    # The environment wins over var/, and an Instagram body takes the Instagram secret.
    (cli_env / "app_secret").write_text("stale_dev_secret_0123456789")
    monkeypatch.setenv("PAGEWIRE_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("PAGEWIRE_INSTAGRAM_APP_SECRET_FILE", secret_file(tmp_path, IG_SECRET))
    assert await webhook_send(gateway, messenger) == 0
    assert await webhook_send(gateway, instagram) == 0
    # --secret-file wins over both.
    assert (
        await webhook_send(gateway, messenger, "--secret-file", secret_file(tmp_path, "x" * 20))
        == 1
    )
    assert [r.events[0].platform for r in ingest.calls] == [
        events_pb2.FACEBOOK,
        events_pb2.FACEBOOK,
        events_pb2.INSTAGRAM,
    ]
    capsys.readouterr()


async def test_webhook_send_explains_an_unreadable_secret_file(
    gateway: httpx.AsyncClient,
    fixtures_dir: Path,
    tmp_path: Path,
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    messenger = fixtures_dir / "meta" / "01_text_message.json"
    assert await webhook_send(gateway, messenger, "--secret-file", str(tmp_path / "missing")) == 2
    assert "--secret-file: cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert await webhook_send(gateway, messenger, "--secret-file", str(empty)) == 2
    assert "is empty" in capsys.readouterr().err
