"""Tracing, log correlation and metrics through the production bootstrap, in process.

The spans are the ones production makes: the kit's gRPC servers and channels,
the engine, the Redis client, the Graph client's transport and the gateway's app
are instrumented by pagewire.kit.telemetry exactly as in the services; only the
exporter differs (memory instead of OTLP).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets

import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind, StatusCode, get_current_span
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from pagewire import fakegraph
from pagewire.graph import GraphClient, GraphSettings, PagesApi
from pagewire.kit import telemetry
from pagewire.kit.authz import Policy
from pagewire.kit.channels import open_channel
from pagewire.kit.db import create_engine
from pagewire.kit.errors import Aborted
from pagewire.kit.grpcserver import start_server
from pagewire.kit.logs import JsonFormatter
from pagewire.kit.metrics import serve_metrics
from pagewire.kit.settings import Secret
from pagewire.proto import router_pb2
from services.gateway.app import create_app
from services.gateway.config import GatewaySettings
from services.gateway.signature import sign
from services.router.mutex import RedisLocks, redis_client
from tests.support.routerharness import PAGE, USER, event, router_harness
from tests.support.spans import attribute_text, recording
from tests.support.waiting import free_port

TEXT = "Hola, ¿tienen envío a Medellín? 🙂"
TOKEN = "EAAGtelemetryTESTtoken0123456789abcdef"
APP_SECRET = "telemetry_app_secret_0123456789"
VERIFY = "telemetry-verify-token-7f3a"
FOREIGN_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_clean(spans, *secrets_: str) -> None:  # type: ignore[no-untyped-def]
    for span in spans:
        exported = attribute_text(span)
        for secret in secrets_:
            assert secret not in exported, f"span {span.name!r} carries a secret"


async def test_each_sql_statement_is_a_span(database_url: str) -> None:
    """Why SQLAlchemy stays below 2.1: its instrumentation must record every statement."""
    with recording() as rec:
        engine = create_engine(database_url, "router")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await conn.execute(text("SELECT :n"), {"n": 424242})
        finally:
            await engine.dispose()
    statements = [s.attributes.get("db.statement") for s in rec.spans()]
    assert "SELECT 1" in statements
    (bound,) = [
        s for s in rec.spans() if s.attributes.get("db.statement", "").startswith("SELECT %")
    ]
    assert bound.kind == SpanKind.CLIENT and bound.attributes["db.system"] == "postgresql"
    assert "424242" not in attribute_text(bound)  # placeholders, never the bound values


async def test_a_failed_statement_keeps_the_row_out_of_its_span(database_url: str) -> None:
    """PostgreSQL's error text quotes the failing row (`DETAIL: Failing row contains`);
    the statement's span says which error, never the row."""
    marker = "PWSPANMARKER-7e1c"
    with recording() as rec:
        engine = create_engine(database_url, "router")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("CREATE TEMP TABLE t (v text CHECK (length(v) < 5))"))
                with pytest.raises(IntegrityError):
                    await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": marker})
        finally:
            await engine.dispose()
    (failed,) = [
        s for s in rec.spans() if s.attributes.get("db.statement", "").startswith("INSERT")
    ]
    assert failed.status.status_code == StatusCode.ERROR
    assert "23514" in (failed.status.description or "")
    assert marker not in attribute_text(failed)


async def test_one_ingest_is_one_trace_from_caller_to_the_log(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """The ACK path: the caller's trace holds the Ingest and the log's append, and no lock."""
    with recording() as rec:
        async with router_harness(database_url, redis_url, redis_prefix) as harness:
            harness.subscriptions.connect(PAGE, "acme")
            request = router_pb2.IngestRequest(
                events=[event("message", "m_tel_1", 1000, text=TEXT), event("read", "r_1", 2000)]
            )
            with rec.tracer.start_as_current_span("webhook") as root:
                await harness.stub.Ingest(request)
            await harness.settled()
    trace_id = root.get_span_context().trace_id
    spans = [s for s in rec.spans() if s.context.trace_id == trace_id]
    ingest = [s for s in spans if s.name == "/pagewire.router.v1.RouterService/Ingest"]
    assert sorted(s.kind.name for s in ingest) == ["CLIENT", "SERVER"], rec.names()
    server = next(s for s in ingest if s.kind == SpanKind.SERVER)
    assert server.attributes["pagewire.event_count"] == 2
    assert server.attributes["pagewire.stored"] == 2
    sql = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    assert any(s.attributes["db.statement"].startswith("INSERT INTO events") for s in sql)
    assert not [s for s in spans if s.attributes.get("db.system") == "redis"]
    assert_clean(rec.spans(), TEXT, "Medell", USER)


async def test_an_apply_batch_is_one_trace_from_the_log_to_sql_and_redis(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    with recording() as rec:
        async with router_harness(database_url, redis_url, redis_prefix) as harness:
            harness.subscriptions.connect(PAGE, "acme")
            request = router_pb2.IngestRequest(
                events=[event("message", "m_tel_2", 1000, text=TEXT), event("read", "r_2", 2000)]
            )
            await harness.ingest(request)
    batches = [
        s for s in rec.spans() if s.name == "apply batch" and s.attributes.get("pagewire.applied")
    ]
    (batch,) = batches
    assert batch.attributes["pagewire.entries"] == 2
    assert batch.attributes["pagewire.applied"] == 2
    spans = [s for s in rec.spans() if s.context.trace_id == batch.context.trace_id]
    # The page's account, asked of the (stand-in) subscriptions service: the same trace.
    assert any(s.name.endswith("SubscriptionsService/GetPage") for s in spans)
    commands = [
        s.attributes["db.statement"] for s in spans if s.attributes.get("db.system") == "redis"
    ]
    # The batch's locks: one pipelined round trip to take them, one to give them back.
    assert [c.split()[0] for c in commands] == ["EVALSHA", "EVALSHA"], commands
    assert all(set(c.split()[1:]) <= {"?"} for c in commands), commands
    sql = [
        s.attributes["db.statement"] for s in spans if s.attributes.get("db.system") == "postgresql"
    ]
    assert any(i.startswith('INSERT INTO "messages"') for i in sql), sql
    # Neither the person's id nor the message's text is in anything exported.
    assert_clean(rec.spans(), TEXT, "Medell", USER)


async def test_a_traced_stream_still_streams(
    database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """StreamEvents through the tracing interceptors on both ends: served, then hung up."""
    with recording() as rec:
        async with router_harness(database_url, redis_url, redis_prefix) as harness:
            harness.subscriptions.connect(PAGE, "acme")
            await harness.stub.Ingest(
                router_pb2.IngestRequest(events=[event("message", "m_stream", 1000, text=TEXT)])
            )
            call = harness.stub.StreamEvents(
                router_pb2.StreamEventsRequest(account_id="acme", after_cursor=0)
            )
            got = []
            async with asyncio.timeout(10):
                async for change in call:
                    got.append(change)
                    if len(got) == 2:
                        break
            call.cancel()
    assert [c.kind for c in got] == [router_pb2.CONVERSATION_CREATED, router_pb2.MESSAGE_CREATED]
    assert any(name.endswith("RouterService/StreamEvents") for name in rec.names())


async def test_health_checks_make_no_spans() -> None:
    with recording() as rec:
        service = await start_server(
            names=["pagewire.test.v1.Nothing"],
            register=lambda s: None,
            access=Policy.open(["pagewire.test.v1.Nothing"]),
        )
        try:
            async with open_channel(f"127.0.0.1:{service.port}") as channel:
                with rec.tracer.start_as_current_span("probe"):
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest()
                    )
        finally:
            await service.stop(grace=0)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert rec.names() == ["probe"]


async def test_lock_wait_exceeded_is_counted_and_traced(redis_url: str, redis_prefix: str) -> None:
    before = sample("pagewire_lock_wait_exceeded_total", lock="conversation")
    with recording() as rec:
        locks = RedisLocks(redis_client(redis_url), redis_prefix, ttl_ms=5000, wait_ms=50)
        try:
            async with locks.hold("facebook:1:2"):
                with pytest.raises(Aborted):
                    async with locks.hold("facebook:1:2"):
                        pass
        finally:
            await locks.close()
    assert sample("pagewire_lock_wait_exceeded_total", lock="conversation") == before + 1
    waits = rec.named("lock.wait")
    assert [w.status.status_code.name for w in waits] == ["UNSET", "ERROR"]
    assert sample("pagewire_lock_hold_seconds_count", lock="conversation") >= 1


async def test_graph_calls_keep_the_token_and_the_query_out_of_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Even an operator asking for every header gets the credentials redacted.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    monkeypatch.delenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", raising=False)
    telemetry.guard_header_capture(os.environ)
    before = sample(
        "pagewire_graph_calls_total", method="GET", endpoint="{id}/subscribed_apps", code="ok"
    )
    fake = await fakegraph.start()
    with recording() as rec:
        client = GraphClient(
            GraphSettings(url=fake.url, instagram_url=fake.url, app_secret=Secret(APP_SECRET))
        )
        try:
            with rec.tracer.start_as_current_span("caller"):
                await PagesApi(client).subscribed_apps("FACEBOOK", PAGE, Secret(TOKEN))
        finally:
            await client.aclose()
            await fake.stop()
    call = rec.one("graph GET {id}/subscribed_apps")
    assert call.attributes["pagewire.graph.endpoint"] == "{id}/subscribed_apps"
    (http,) = [s for s in rec.spans() if s.kind == SpanKind.CLIENT]
    assert http.parent.span_id == call.context.span_id
    url = http.attributes.get("http.url") or http.attributes.get("url.full")
    assert url == f"{fake.url}/v25.0/{{id}}/subscribed_apps", url
    assert http.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    assert_clean(rec.spans(), TOKEN, "appsecret_proof", APP_SECRET)
    assert (
        sample(
            "pagewire_graph_calls_total", method="GET", endpoint="{id}/subscribed_apps", code="ok"
        )
        == before + 1
    )


def _gateway(ingest) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    settings = GatewaySettings(
        app_secret=Secret(APP_SECRET),
        instagram_app_secret=Secret(APP_SECRET),
        verify_token=Secret(VERIFY),
        router_addr="127.0.0.1:1",
    )
    app = create_app(settings, ingest)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway")


def _webhook(mid: str) -> bytes:
    item = {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": 1778163045000,
        "message": {"mid": mid, "text": TEXT},
    }
    entry = {"id": PAGE, "time": 1778163045000, "messaging": [item]}
    return json.dumps({"object": "page", "entry": [entry]}).encode()


async def test_the_gateway_request_is_the_root_and_the_router_call_its_descendant() -> None:
    seen: list[int] = []

    async def ingest(request: router_pb2.IngestRequest, timeout: float) -> object:
        seen.append(get_current_span().get_span_context().trace_id)
        return router_pb2.IngestResponse(stored=0, duplicates=1)

    ok = sample("pagewire_webhooks_received_total", platform="facebook", outcome="ok")
    bad = sample("pagewire_webhooks_received_total", platform="facebook", outcome="bad_signature")
    dup = sample("pagewire_webhook_events_total", platform="facebook", result="duplicate")
    with recording() as rec:
        async with _gateway(ingest) as client:
            body = _webhook("m_gw_" + secrets.token_hex(4))
            headers = {"X-Hub-Signature-256": sign(body, APP_SECRET.encode())}
            answer = await client.post(
                "/webhooks/facebook",
                content=body,
                headers={**headers, "traceparent": FOREIGN_TRACEPARENT},
            )
            assert answer.status_code == 200
            refused = await client.post(
                "/webhooks/facebook", content=body, headers={"X-Hub-Signature-256": "sha256=00"}
            )
            assert refused.status_code == 401
            handshake = await client.get(
                "/webhooks/facebook",
                params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "42"},
            )
            assert handshake.text == "42"
            for path in ("/healthz", "/metrics"):
                assert (await client.get(path)).status_code == 200
    roots = [s for s in rec.spans() if s.kind == SpanKind.SERVER]
    assert len(roots) == 3, rec.names()  # two POSTs and the handshake; no probe, no scrape
    assert all(s.parent is None for s in roots)  # the foreign traceparent was ignored
    accepted = next(s for s in roots if s.attributes.get("pagewire.outcome") == "ok")
    assert accepted.context.trace_id != int(FOREIGN_TRACEPARENT.split("-")[1], 16)
    assert seen == [accepted.context.trace_id]
    assert accepted.attributes["pagewire.platform"] == "facebook"
    assert accepted.attributes["pagewire.events_duplicates"] == 1
    children = {
        s.name: s for s in rec.spans() if s.parent and s.parent.span_id == accepted.context.span_id
    }
    assert {"webhook.verify_signature", "webhook.normalize"} <= set(children)
    assert children["webhook.normalize"].attributes["pagewire.event_count"] == 1
    assert_clean(rec.spans(), VERIFY, TEXT, "Medell", APP_SECRET)
    assert sample("pagewire_webhooks_received_total", platform="facebook", outcome="ok") == ok + 1
    assert (
        sample("pagewire_webhooks_received_total", platform="facebook", outcome="bad_signature")
        == bad + 1
    )
    assert (
        sample("pagewire_webhook_events_total", platform="facebook", result="duplicate") == dup + 1
    )


def test_log_lines_inside_a_span_carry_its_ids() -> None:
    formatter = JsonFormatter("test")
    record = logging.LogRecord("pagewire.test", logging.INFO, __file__, 1, "inside", None, None)
    with recording() as rec:
        with rec.tracer.start_as_current_span("work") as span:
            inside = json.loads(formatter.format(record))
    outside = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside and "span_id" not in outside


async def test_the_metrics_port_serves_the_exposition() -> None:
    port = free_port()
    close = await serve_metrics("127.0.0.1", port)
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await close()
    assert answer.status_code == 200
    assert "pagewire_lock_wait_seconds_bucket" in answer.text
    assert answer.headers["content-type"].startswith("text/plain")
