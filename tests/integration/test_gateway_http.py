"""The gateway over real HTTP, in uvicorn, in front of a real in-process gRPC router stand-in."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from pagewire.contract import MAX_EVENTS_PER_CALL
from pagewire.kit.authz import Policy
from pagewire.kit.grpcserver import GrpcService, start_server
from pagewire.kit.logs import JsonFormatter
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from services.gateway.__main__ import build_server
from services.gateway.app import ROUTER_SERVICE, IngestFn, ReadyFn, create_app
from services.gateway.config import GatewaySettings
from services.gateway.signature import sign
from tests.support.waiting import free_port, wait_for

APP_SECRET = "test_app_secret_0123456789abcdef"
VERIFY_TOKEN = "verify-" + secrets.token_hex(12)
MAX_BODY = 64 * 1024
INGEST_TIMEOUT_S = 1.0
FB = "/webhooks/facebook"
IG = "/webhooks/instagram"
DASHBOARD_TEST = b'{"object":"page","entry":[{"messaging":[{"message":"TEST_MESSAGE"}]}]}'


# ---------------------------------------------------------------- the router stand-in


@dataclass
class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """Records every Ingest; can be told to fail (UNAVAILABLE) or to hang past the deadline,
    to answer the next calls with given codes (`script`, one per call in order of arrival),
    and to hold every call until `barrier` calls have arrived (proof they run at once)."""

    received: list[router_pb2.IngestRequest] = field(default_factory=list)
    mode: str = "ok"
    release: asyncio.Event = field(default_factory=asyncio.Event)
    service: GrpcService | None = None
    script: list[grpc.StatusCode | None] = field(default_factory=list)
    barrier: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def Ingest(  # noqa: N802 - the proto's name
        self, request: router_pb2.IngestRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.IngestResponse:
        self.received.append(request)
        code = self.script.pop(0) if self.script else None
        if self.barrier:
            if len(self.received) >= self.barrier:
                self.arrived.set()
            await self.arrived.wait()
        if code is not None:
            await context.abort(code, f"{code.name} from the router (test)")
        if self.mode == "fail":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "router down (test)")
        if self.mode == "hang":
            await self.release.wait()
        return router_pb2.IngestResponse(stored=len(request.events))

    def events(self) -> list[events_pb2.Event]:
        return [event for request in self.received for event in request.events]

    async def set_serving(self, serving: bool) -> None:
        assert self.service is not None
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        await self.service.health.set(ROUTER_SERVICE, status)


@pytest.fixture(scope="module")
async def router() -> AsyncIterator[FakeRouter]:
    fake = FakeRouter()
    fake.service = await start_server(
        names=[ROUTER_SERVICE],
        register=lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(fake, server),
        access=Policy.open([ROUTER_SERVICE]),
        port=0,
    )
    try:
        yield fake
    finally:
        fake.release.set()
        await fake.service.stop(grace=0)


@pytest.fixture(autouse=True)
def fresh_router(router: FakeRouter) -> Iterator[None]:
    """Each test starts with an empty record and a healthy router."""
    router.received.clear()
    router.mode = "ok"
    router.release = asyncio.Event()
    router.script = []
    router.barrier = 0
    router.arrived = asyncio.Event()
    yield
    router.release.set()  # frees a handler a test left hanging
    router.arrived.set()


# ---------------------------------------------------------------- the gateway under test


class LogCapture(logging.Handler):
    """Everything the gateway process logs, formatted exactly as production prints it."""

    # The test's own HTTP client logs its requests (verify-token URL included); it is not
    # part of the gateway.
    CLIENT_LOGGERS = ("httpx", "httpcore")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("gateway"))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.CLIENT_LOGGERS):
            return
        self.records.append(record)
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def log_capture() -> Iterator[LogCapture]:
    handler = LogCapture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # the strictest case: even debug lines must be clean
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def gateway_env(router_port: int, **extra: str) -> dict[str, str]:
    environ = {
        "PAGEWIRE_APP_SECRET": APP_SECRET,
        "PAGEWIRE_VERIFY_TOKEN": VERIFY_TOKEN,
        "PAGEWIRE_ROUTER_ADDR": f"127.0.0.1:{router_port}",
        "PAGEWIRE_GATEWAY_PORT": str(free_port()),
        "PAGEWIRE_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        "PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S": str(INGEST_TIMEOUT_S),
    }
    environ.update({f"PAGEWIRE_{k}": v for k, v in extra.items()})
    return environ


@asynccontextmanager
async def running_gateway(
    environ: dict[str, str], ingest: IngestFn | None = None, ready: ReadyFn | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The production app and uvicorn server, in this process; yields a client for it."""
    settings = GatewaySettings.from_env(environ)
    app = create_app(settings, ingest, ready=ready)
    server = build_server(settings, app, handle_signals=False)
    task = asyncio.create_task(server.serve())
    base = f"http://{settings.host}:{settings.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:

            async def answers() -> bool:
                if task.done():
                    task.result()  # surfaces a startup failure instead of a timeout
                return (await client.get("/healthz")).status_code == 200

            await wait_for(answers, timeout=10, what="gateway /healthz")
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture(scope="module")
async def gateway(router: FakeRouter, log_capture: LogCapture) -> AsyncIterator[httpx.AsyncClient]:
    assert router.service is not None
    async with running_gateway(gateway_env(router.service.port)) as client:
        yield client


# ---------------------------------------------------------------- fixtures and signing


def signatures(fixtures: Path) -> list[dict[str, str]]:
    return json.loads((fixtures / "meta" / "SIGNATURES.json").read_text())["fixtures"]


def path_for(body: bytes) -> str:
    return IG if json.loads(body).get("object") == "instagram" else FB


async def post(
    client: httpx.AsyncClient,
    body: bytes,
    path: str = FB,
    *,
    signature: str | bytes | None = None,
    secret: str = APP_SECRET,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    all_headers: dict[str, str | bytes] = {"content-type": "application/json"}
    if signature is None:
        signature = sign(body, secret.encode())
    if signature:
        all_headers["x-hub-signature-256"] = signature
    all_headers.update(headers or {})
    return await client.post(path, content=body, headers=all_headers)


def item_count(body: bytes) -> int:
    return sum(
        len(entry.get(key, []))
        for entry in json.loads(body)["entry"]
        for key in ("messaging", "standby", "changes")
    )


# ---------------------------------------------------------------- probes and handshake


async def test_healthz_and_readyz(gateway: httpx.AsyncClient, router: FakeRouter) -> None:
    assert (await gateway.get("/healthz")).json() == {"status": "ok"}
    assert (await gateway.get("/readyz")).status_code == 200
    await router.set_serving(False)
    try:
        assert (await gateway.get("/readyz")).status_code == 503
        assert (await gateway.get("/healthz")).status_code == 200  # liveness never follows
    finally:
        await router.set_serving(True)
    assert (await gateway.get("/readyz")).status_code == 200


@pytest.mark.parametrize("path", [FB, IG])
@pytest.mark.parametrize("challenge", ["1158201444", "CHALLENGE_ACCEPTED", "a+b/c=d%20é 🙂"])
async def test_verify_handshake_echoes_challenge(
    gateway: httpx.AsyncClient, path: str, challenge: str
) -> None:
    params = {"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": VERIFY_TOKEN}
    response = await gateway.get(path, params=params)
    assert response.status_code == 200
    assert response.content == challenge.encode()
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "wrong"},
        {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": VERIFY_TOKEN + "x"},
        {"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": "vérify"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.challenge": "1", "hub.verify_token": VERIFY_TOKEN},
        {"hub_mode": "subscribe", "hub_challenge": "1", "hub_verify_token": VERIFY_TOKEN},
        {},
    ],
)
async def test_verify_handshake_refused(gateway: httpx.AsyncClient, params: dict[str, str]) -> None:
    for path in (FB, IG):
        response = await gateway.get(path, params=params)
        assert response.status_code == 403
        assert b"1" not in response.content


# ---------------------------------------------------------------- the signature matrix


async def test_valid_signature_is_forwarded(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    response = await post(gateway, raw)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "events": 1}
    [event] = router.events()
    assert event.message.text == "Hola, ¿tienen envío a Medellín? 🙂"
    assert event.page_id == "109384756201938"


async def test_bad_signatures_are_401_and_forward_nothing(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path
) -> None:
    name = "01_text_message.json"
    raw = (fixtures_dir / "meta" / name).read_bytes()
    entry = next(e for e in signatures(fixtures_dir) if e["file"] == name)
    reserialized = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    cases = {
        "wrong secret": await post(gateway, raw, secret="another_secret_0123456789abcdef"),
        "missing header": await post(gateway, raw, signature=""),
        "sha1 only": await post(
            gateway,
            raw,
            signature="",
            headers={"x-hub-signature": entry["x_hub_signature_of_file_bytes"]},
        ),
        "sha1 value in the 256 header": await post(
            gateway, raw, signature=entry["x_hub_signature_of_file_bytes"]
        ),
        "re-serialized after signing": await post(
            gateway, reserialized, signature=entry["x_hub_signature_256_of_file_bytes"]
        ),
        "not ascii": await post(gateway, raw, signature=("sha256=" + "é" * 64).encode("latin-1")),
        "signature of another body": await post(
            gateway, raw, IG, signature=entry["x_hub_signature_256_of_compact_body"]
        ),
    }
    for case, response in cases.items():
        assert response.status_code == 401, case
        assert response.json() == {"error": "bad signature"}, case
    assert router.received == []


async def test_every_meta_fixture_is_accepted_with_its_recorded_signature(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path
) -> None:
    entries = signatures(fixtures_dir)
    expected_events = 0
    for entry in entries:
        raw = (fixtures_dir / "meta" / entry["file"]).read_bytes()
        compact = entry["compact_body"].encode()
        for body, signature in (
            (raw, entry["x_hub_signature_256_of_file_bytes"]),
            (compact, entry["x_hub_signature_256_of_compact_body"]),
        ):
            response = await post(gateway, body, path_for(body), signature=signature)
            assert response.status_code == 200, entry["file"]
            assert response.json() == {"status": "ok", "events": item_count(body)}, entry["file"]
            expected_events += item_count(body)
    # One Ingest per POST, every item of every entry in it.
    assert len(router.received) == 2 * len(entries)
    assert len(router.events()) == expected_events
    platforms = {e.platform for e in router.events()}
    assert platforms == {events_pb2.FACEBOOK, events_pb2.INSTAGRAM}


async def test_one_ingest_carries_all_four_events_of_the_batch(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "02_batch_two_pages_two_messages.json").read_bytes()
    assert (await post(gateway, raw)).status_code == 200
    [request] = router.received
    assert [(e.page_id, e.user_id) for e in request.events] == [
        ("109384756201938", "7294015836620194"),
        ("109384756201938", "6183920457712836"),
        ("117465829304716", "5502918364471029"),
        ("117465829304716", "8841027365190453"),
    ]
    assert all(e.id == e.message.mid and e.received_at_ms > 0 for e in request.events)


async def test_every_peer_body_is_never_a_5xx(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path
) -> None:
    peers = sorted((fixtures_dir / "peers").glob("*.json"))
    assert len(peers) == 40
    for path in peers:
        raw = path.read_bytes()
        response = await post(gateway, raw)
        assert response.status_code == 200, (path.name, response.text)
    assert len(router.received) == len(peers)
    mids = {e.message.mid for e in router.events() if e.HasField("message") and e.message.mid}
    assert "mid.1486464322190:cb04e5a654" in mids


# ---------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'"page"',
        b'{"object":"page"}',
        b'{"object":"page","entry":{"id":"1"}}',
        b'{"object":"page","entry":[NaN]}',
        b'{"object":"page","entry":[],"x":"\xff"}',
        b"",
    ],
)
async def test_malformed_body_is_400(
    gateway: httpx.AsyncClient, router: FakeRouter, body: bytes
) -> None:
    response = await post(gateway, body)
    assert response.status_code == 400
    assert response.json()["error"] == "malformed body"
    assert response.json()["detail"]  # which rule the body broke, for whoever sent it
    assert router.received == []


async def test_other_objects_are_refused_not_acknowledged_and_dropped(
    gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    """A signed object no path here reads is not answered 200 (that would drop it)."""
    body = b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[]}]}'
    response = await post(gateway, body)
    assert response.status_code == 400
    assert response.json()["error"] == "wrong object"
    assert router.received == []


async def test_dashboard_test_body_is_200_without_router(
    gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    response = await post(gateway, DASHBOARD_TEST)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "events": 0}
    assert router.received == []


def padded_body(size: int) -> bytes:
    """A valid envelope of exactly `size` bytes."""
    head = b'{"object":"page","entry":[],"pad":"'
    tail = b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_body_at_the_limit_is_accepted(
    gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    body = padded_body(MAX_BODY)
    assert len(body) == MAX_BODY
    assert (await post(gateway, body)).status_code == 200


async def test_oversized_body_with_content_length_is_413(
    gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    body = padded_body(MAX_BODY + 1)
    response = await post(gateway, body)
    assert response.status_code == 413
    assert response.json() == {"error": "body too large"}
    assert router.received == []


async def test_oversized_chunked_body_without_content_length_is_413(
    gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    body = padded_body(MAX_BODY + 1)
    sent: list[httpx.Request] = []

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    async def remember(request: httpx.Request) -> None:
        sent.append(request)

    headers = {"x-hub-signature-256": sign(body, APP_SECRET.encode())}
    async with httpx.AsyncClient(
        base_url=str(gateway.base_url), event_hooks={"request": [remember]}
    ) as client:
        response = await client.post(FB, content=chunks(), headers=headers)
    assert "content-length" not in sent[0].headers
    assert sent[0].headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert router.received == []


# ---------------------------------------------------------------- the router failing


async def test_router_failing_is_503(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    router.mode = "fail"
    response = await post(gateway, raw)
    assert response.status_code == 503
    assert response.json() == {"error": "router unavailable"}
    assert len(router.received) == 1  # it was asked once, and said no
    router.mode = "ok"
    assert (await post(gateway, raw)).status_code == 200  # Meta's retry succeeds


async def test_router_hanging_is_503_within_the_deadline(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "06_read.json").read_bytes()
    router.mode = "hang"
    started = time.monotonic()
    response = await post(gateway, raw)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert INGEST_TIMEOUT_S * 0.9 <= elapsed < INGEST_TIMEOUT_S + 1.5
    assert len(router.received) == 1


async def test_router_unreachable_is_503_and_not_ready(
    log_capture: LogCapture, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    async with running_gateway(gateway_env(free_port())) as client:
        assert (await post(client, raw)).status_code == 503
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_instagram_path_uses_the_instagram_secret(
    router: FakeRouter, log_capture: LogCapture, fixtures_dir: Path
) -> None:
    ig_secret = "ig_secret_" + secrets.token_hex(12)
    assert router.service is not None
    raw = (fixtures_dir / "meta" / "12_instagram_text.json").read_bytes()
    environ = gateway_env(router.service.port, INSTAGRAM_APP_SECRET=ig_secret)
    async with running_gateway(environ) as client:
        assert (await post(client, raw, IG, secret=ig_secret)).status_code == 200
        assert (await post(client, raw, IG, secret=APP_SECRET)).status_code == 401
        assert (await post(client, raw, FB, secret=ig_secret)).status_code == 401
        fb = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
        assert (await post(client, fb, FB, secret=APP_SECRET)).status_code == 200
    assert len(router.received) == 2
    assert ig_secret not in log_capture.text()


async def test_an_injected_ingest_callable_replaces_the_router(
    log_capture: LogCapture, fixtures_dir: Path
) -> None:
    calls: list[tuple[int, float]] = []
    failing = False
    serving = True

    async def ingest(request: router_pb2.IngestRequest, timeout: float) -> None:
        calls.append((len(request.events), timeout))
        if failing:
            raise RuntimeError("store is down")

    async def ready(timeout: float) -> bool:
        return serving

    raw = (fixtures_dir / "meta" / "02_batch_two_pages_two_messages.json").read_bytes()
    async with running_gateway(gateway_env(free_port()), ingest, ready) as client:
        assert (await post(client, raw)).status_code == 200
        assert calls == [(4, INGEST_TIMEOUT_S)]
        failing = True
        assert (await post(client, raw)).status_code == 503
        assert (await client.get("/readyz")).status_code == 200
        serving = False
        assert (await client.get("/readyz")).status_code == 503


async def test_other_methods_are_405(gateway: httpx.AsyncClient) -> None:
    response = await gateway.put(FB, content=b"{}")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "POST"}


# ---------------------------------------------------------------- what the logs may say


def message_texts(fixtures: Path) -> list[str]:
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key == "text" and isinstance(inner, str) and len(inner) >= 8:
                    texts.append(inner)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    for path in sorted((fixtures / "meta").glob("*.json")):
        if path.name != "SIGNATURES.json":
            walk(json.loads(path.read_bytes()))
    return texts


async def test_logs_never_show_secrets_or_message_text(
    gateway: httpx.AsyncClient, router: FakeRouter, log_capture: LogCapture, fixtures_dir: Path
) -> None:
    # Traffic of every kind, so this test stands on its own whatever ran before it.
    for entry in signatures(fixtures_dir):
        raw = (fixtures_dir / "meta" / entry["file"]).read_bytes()
        await post(gateway, raw, path_for(raw))
        await post(gateway, raw, path_for(raw), secret="another_secret_0123456789abcdef")
    await post(gateway, b"{not json")
    await post(gateway, padded_body(MAX_BODY + 1))
    router.mode = "fail"
    await post(gateway, (fixtures_dir / "meta" / "03_echo_from_our_app.json").read_bytes())
    router.mode = "ok"
    ok = {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": VERIFY_TOKEN}
    await gateway.get(FB, params=ok)
    await gateway.get(IG, params={**ok, "hub.verify_token": "wrong-token-value"})

    text = log_capture.text()
    assert log_capture.lines, "the capture saw nothing; the test would prove nothing"
    forbidden = [APP_SECRET, VERIFY_TOKEN, "wrong-token-value", *message_texts(fixtures_dir)]
    for needle in forbidden:
        assert needle not in text
        assert json.dumps(needle)[1:-1] not in text  # nor in its JSON-escaped form

    rejected = [r for r in log_capture.records if r.getMessage() == "webhook signature rejected"]
    assert rejected and all(r.levelno == logging.WARNING for r in rejected)
    assert {getattr(r, "platform", None) for r in rejected} == {"facebook", "instagram"}
    reasons = {getattr(r, "reason", None) for r in rejected}
    assert "mismatch" in reasons
    assert reasons <= {
        "mismatch",
        "missing",
        "malformed",
        "not sha256",
        "only the legacy sha1 header",
    }


async def test_a_healthy_post_logs_nothing_at_info(
    gateway: httpx.AsyncClient, router: FakeRouter, log_capture: LogCapture, fixtures_dir: Path
) -> None:
    raw = (fixtures_dir / "meta" / "02_batch_two_pages_two_messages.json").read_bytes()
    before = len(log_capture.records)
    for _ in range(20):
        assert (await post(gateway, raw)).status_code == 200
    loud = [r for r in log_capture.records[before:] if r.levelno >= logging.INFO]
    assert loud == [], [r.getMessage() for r in loud]


# ---------------------------------------------------------------- changes[], large POSTs, codes

PAGE = "109384756201938"
PLANTED = "planted customer text: my address is 12 Rue des Lilas"


def webhooks_counted(outcome: str, platform: str = "facebook") -> float:
    labels = {"platform": platform, "outcome": outcome}
    return REGISTRY.get_sample_value("pagewire_webhooks_received_total", labels) or 0.0


def messages_body(count: int, text: str = "hi") -> bytes:
    items = [
        {
            "sender": {"id": str(7294015836620000 + n)},
            "recipient": {"id": PAGE},
            "timestamp": 1778163045000 + n,
            "message": {"mid": f"m_bulk_{n}", "text": text},
        }
        for n in range(count)
    ]
    return json.dumps(
        {"object": "page", "entry": [{"id": PAGE, "time": 1778163045612, "messaging": items}]}
    ).encode()


async def test_changes_items_are_forwarded_as_comment_and_mention_events(
    gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    comment = {
        "field": "feed",
        "value": {
            "from": {"id": "6183920457712836", "name": "Ana"},
            "item": "comment",
            "verb": "add",
            "message": "Is the blue one still available?",
            "post_id": f"{PAGE}_901",
            "comment_id": "901_4471",
            "created_time": 1778163045,
        },
    }
    mention = {"field": "mentions", "value": {"media_id": "1791", "comment_id": "1789"}}
    body = json.dumps(
        {"object": "page", "entry": [{"id": PAGE, "time": 1778163045612, "changes": [comment]}]}
    ).encode()
    ig_body = json.dumps(
        {"object": "instagram", "entry": [{"id": "17841405822304914", "changes": [mention]}]}
    ).encode()
    assert (await post(gateway, body)).json() == {"status": "ok", "events": 1}
    assert (await post(gateway, ig_body, IG)).json() == {"status": "ok", "events": 1}
    feed, mentioned = router.events()
    # The page's event, at the time Meta notified it; the commenter is the comment's author.
    assert (feed.WhichOneof("kind"), feed.user_id, feed.timestamp_ms) == (
        "comment",
        "",
        1778163045612,
    )
    assert (feed.comment.comment_id, feed.comment.author_id) == ("901_4471", "6183920457712836")
    assert json.loads(feed.raw_json) == comment
    assert (mentioned.WhichOneof("kind"), mentioned.user_id) == ("mention", "")
    assert (mentioned.mention.media_id, mentioned.mention.comment_id) == ("1791", "1789")
    assert mentioned.platform == events_pb2.INSTAGRAM
    # Meta's retry of the same body carries the same ids.
    await post(gateway, body)
    assert router.events()[2].id == feed.id


@pytest.fixture(scope="module")
async def roomy_gateway(
    router: FakeRouter, log_capture: LogCapture
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose caps let one POST carry 2,500 items."""
    assert router.service is not None
    environ = gateway_env(
        router.service.port, GATEWAY_MAX_ITEMS="5000", GATEWAY_MAX_BODY_BYTES=str(4 * 1024 * 1024)
    )
    async with running_gateway(environ) as client:
        yield client


async def test_a_large_post_is_sent_as_concurrent_calls_of_at_most_the_contract_size(
    roomy_gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    body = messages_body(2500)
    # Each call is held until all three have arrived: calls sent one after the other
    # would never get there, and the POST would time out with a 503.
    router.barrier = 3
    response = await post(roomy_gateway, body)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "events": 2500}
    sizes = sorted(len(r.events) for r in router.received)
    assert sizes == [500, MAX_EVENTS_PER_CALL, MAX_EVENTS_PER_CALL]
    assert sorted(e.id for e in router.events()) == sorted(f"m_bulk_{n}" for n in range(2500))


async def test_one_failed_call_of_a_large_post_is_a_503(
    roomy_gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    body = messages_body(2500)
    router.script = [None, grpc.StatusCode.UNAVAILABLE, None]
    response = await post(roomy_gateway, body)
    assert response.status_code == 503
    assert len(router.received) == 3
    # Meta's retry: every call succeeds (the events already stored are duplicates).
    assert (await post(roomy_gateway, body)).status_code == 200
    assert len(router.received) == 6


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ],
    ids=lambda code: code.name,
)
async def test_router_errors_other_than_invalid_argument_are_503(
    gateway: httpx.AsyncClient, router: FakeRouter, fixtures_dir: Path, code: grpc.StatusCode
) -> None:
    raw = (fixtures_dir / "meta" / "01_text_message.json").read_bytes()
    before = webhooks_counted("unavailable")
    router.script = [code]
    response = await post(gateway, raw)
    assert response.status_code == 503
    assert response.json() == {"error": "router unavailable"}
    assert webhooks_counted("unavailable") == before + 1


async def test_invalid_argument_is_200_rejected_and_logged_without_customer_text(
    gateway: httpx.AsyncClient, router: FakeRouter, log_capture: LogCapture
) -> None:
    body = messages_body(2, text=PLANTED)
    before = webhooks_counted("rejected")
    first_record = len(log_capture.records)
    router.script = [grpc.StatusCode.INVALID_ARGUMENT]
    response = await post(gateway, body)
    assert response.status_code == 200
    assert response.json() == {"status": "rejected", "events": 2}
    assert webhooks_counted("rejected") == before + 1
    records = log_capture.records[first_record:]
    lines = log_capture.lines[first_record:]
    [warning] = [r for r in records if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith("router rejected a webhook")
    assert getattr(warning, "detail", None) == "INVALID_ARGUMENT from the router (test)"
    logged = json.loads(vars(warning)["body"])  # set through `extra`
    item = logged["entry"][0]["messaging"][0]
    assert item["message"]["mid"] == "m_bulk_0" and item["sender"]["id"] == "7294015836620000"
    assert item["message"]["text"] == f"<redacted: {len(PLANTED)} chars>"
    text = "\n".join(lines)
    assert PLANTED not in text and "Rue des Lilas" not in text
    assert "m_bulk_0" in text  # the redacted body is in the line, ids and all
    # Meta's retry would meet the same refusal; nothing asks for one.
    assert len(router.received) == 1


async def test_a_rejected_call_among_several_is_still_200_rejected(
    roomy_gateway: httpx.AsyncClient, router: FakeRouter
) -> None:
    router.script = [None, grpc.StatusCode.INVALID_ARGUMENT, None]
    response = await post(roomy_gateway, messages_body(2500))
    assert response.status_code == 200
    assert response.json()["status"] == "rejected"
    # Rejected and unavailable together: the retry can still store what was unavailable.
    router.script = [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE, None]
    assert (await post(roomy_gateway, messages_body(2500))).status_code == 503
