"""Observability through real processes: one trace per webhook, metrics that move, no leaks.

The four services run as in production, over mutual TLS, exporting their spans
over OTLP to a receiver in this test (the gateway and router over OTLP/HTTP,
tokens and subscriptions over OTLP/gRPC) and serving Prometheus metrics.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pagewire import fakegraph
from pagewire.localsuite import GRPC_SERVICES
from services.tokens.vault import generate_keyring
from tests.e2e.conftest import PAGE_TOKENS, cli, connect, sign
from tests.support.otlp import OtlpReceiver, ReceivedSpan, span_tree
from tests.support.secretscan import leaks
from tests.support.stack import APP_SECRET, VERIFY_TOKEN, Stack
from tests.support.waiting import free_port, wait_for

PAGE = "109384756201938"
UNCONNECTED = "117465829304716"
USER = "7294015836620194"
# Known texts that must never leave the processes except as stored data.
INBOUND_TEXT = "¿Tienen talla 38? Vivo en Cartagena 🙂"
REPLY_TEXT = "¡Sí! Enviamos a Cartagena mañana 🚚"
SERVER = 2  # SpanKind.SPAN_KIND_SERVER in OTLP


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    await otlp.start()
    yield otlp
    await otlp.stop()


@pytest.fixture
async def traced(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    graph: fakegraph.FakeGraph,
    receiver: OtlpReceiver,
) -> AsyncIterator[Stack]:
    """The whole suite with tracing to `receiver` and a metrics port per gRPC service."""
    stack = Stack.create(
        tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        graph_url=graph.url,
        keyring=generate_keyring(),
        tls=True,
    )
    protocols = {
        "gateway": "http/protobuf",
        "router": "http/protobuf",
        "tokens": "grpc",
        "subscriptions": "grpc",
    }
    stack.ports.update({f"{name}-metrics": free_port() for name in GRPC_SERVICES})
    try:
        for service in ("tokens", "subscriptions", "router", "gateway"):
            env = receiver.env(protocols[service])
            if service in GRPC_SERVICES:
                env["PAGEWIRE_METRICS_PORT"] = str(stack.ports[f"{service}-metrics"])
            await stack.start(service, **env)
        yield stack
    finally:
        await stack.stop_all()


def webhook(page_id: str, mid: str, text: str) -> bytes:
    now = int(time.time() * 1000)
    item = {
        "sender": {"id": USER},
        "recipient": {"id": page_id},
        "timestamp": now,
        "message": {"mid": mid, "text": text},
    }
    return json.dumps(
        {"object": "page", "entry": [{"id": page_id, "time": now, "messaging": [item]}]},
        ensure_ascii=False,
    ).encode()


async def scrape(stack: Stack) -> dict[str, str]:
    """Every process's /metrics, by service."""
    urls = {"gateway": f"{stack.gateway_url}/metrics"} | {
        name: f"http://127.0.0.1:{stack.ports[f'{name}-metrics']}/metrics" for name in GRPC_SERVICES
    }
    async with httpx.AsyncClient(timeout=5) as client:
        return {name: (await client.get(url)).text for name, url in urls.items()}


def value(exposition: str, name: str, **labels: str) -> float:
    """One sample of a scrape: the metric `name` whose labels include `labels`."""
    for line in exposition.splitlines():
        match = re.fullmatch(r"([a-z_:]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        have = dict(re.findall(r'([a-z_]+)="([^"]*)"', match[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(match[3])
    return 0.0


def metric_labels(exposition: str) -> str:
    """Every label value of a scrape (what the secret scan looks at, besides names)."""
    return "\n".join(re.findall(r'="([^"]*)"', exposition))


async def test_one_webhook_is_one_trace_across_gateway_router_and_tokens(
    traced: Stack, receiver: OtlpReceiver, graph: fakegraph.FakeGraph
) -> None:
    stack = traced
    await connect(stack, PAGE)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=10) as client:
        # The handshake carries the verify token in its query: it must not reach a span.
        handshake = await client.get(
            "/webhooks/facebook",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": VERIFY_TOKEN,
                "hub.challenge": "7",
            },
        )
        assert handshake.text == "7"
        body = webhook(PAGE, "m_obs_first_contact", INBOUND_TEXT)
        first = await client.post(
            "/webhooks/facebook", content=body, headers={"X-Hub-Signature-256": sign(body)}
        )
        assert first.status_code == 200
        again = await client.post(
            "/webhooks/facebook", content=body, headers={"X-Hub-Signature-256": sign(body)}
        )
        assert again.status_code == 200
        forged = await client.post(
            "/webhooks/facebook",
            content=body,
            headers={"X-Hub-Signature-256": "sha256=" + "0" * 64},
        )
        assert forged.status_code == 401
        stray = webhook(UNCONNECTED, "m_obs_parked", INBOUND_TEXT)
        parked = await client.post(
            "/webhooks/facebook", content=stray, headers={"X-Hub-Signature-256": sign(stray)}
        )
        assert parked.status_code == 200

    # The webhook for a new contact: gateway → router (Ingest) → the log's commit, one
    # trace; the apply batch that makes it visible is a trace of its own, linked to it, and
    # holds the profile lookup → tokens (DecryptToken) → Graph that follows.
    def webhook_trace(spans: list[ReceivedSpan]) -> str | None:
        for span in spans:
            if (
                span.service == "pagewire-gateway"
                and span.kind == SERVER
                and span.attributes.get("pagewire.events_stored") == 1
            ):
                return span.trace_id
        return None

    await receiver.wait_for_spans(webhook_trace, what="the webhook's gateway span")
    trace_id = webhook_trace(receiver.spans)
    assert trace_id is not None

    def webhook_spans(spans: list[ReceivedSpan]) -> set[tuple[str, str]]:
        return {(s.service, s.name) for s in spans if s.trace_id == trace_id}

    def apply_trace(spans: list[ReceivedSpan]) -> str | None:
        for span in spans:
            if span.name == "apply batch" and trace_id in span.linked_traces:
                return span.trace_id
        return None

    def complete(spans: list[ReceivedSpan]) -> bool:
        applied = apply_trace(spans)
        names = {(s.service, s.name) for s in spans if s.trace_id == applied}
        return (
            applied is not None
            and {
                ("pagewire-tokens", "/pagewire.tokens.v1.TokensService/DecryptToken"),
                ("pagewire-router", "profile lookup"),
            }
            <= names
        )

    await receiver.wait_for_spans(complete, what="the apply batch's trace, linked to the webhook")
    assert ("pagewire-router", "/pagewire.router.v1.RouterService/Ingest") in webhook_spans(
        receiver.spans
    )
    await wait_for(lambda: graph.state.requests_to("GET", f"/{USER}"), what="the profile lookup")

    sent = await cli(
        stack,
        "messages",
        "send",
        "--page-id",
        PAGE,
        "--user",
        USER,
        "--text",
        REPLY_TEXT,
        "--idempotency-key",
        "obs-reply-1",
        "--json",
    )
    assert json.loads(sent.stdout)["state"] == "ACCEPTED"
    scraped = await scrape(stack)

    await stack.stop_all()  # SIGTERM: each process flushes what it still buffers
    spans = receiver.trace(trace_id)
    names = {(s.service, s.name) for s in spans}
    for expected in (
        ("pagewire-gateway", "webhook.verify_signature"),
        ("pagewire-gateway", "webhook.normalize"),
        ("pagewire-gateway", "/pagewire.router.v1.RouterService/Ingest"),
        ("pagewire-router", "/pagewire.router.v1.RouterService/Ingest"),
    ):
        assert expected in names, (expected, span_tree(spans))
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.kind) for r in roots] == [("pagewire-gateway", SERVER)]
    # The ACK's trace: the log's append, and no lock.
    assert any(
        str(s.attributes.get("db.statement", "")).startswith("INSERT INTO events") for s in spans
    )
    assert not any(s.attributes.get("db.system") == "redis" for s in spans)

    applied_id = apply_trace(receiver.spans)
    assert applied_id is not None
    applied = receiver.trace(applied_id)
    applied_names = {(s.service, s.name) for s in applied}
    services = {s.service for s in applied}
    assert {"pagewire-router", "pagewire-tokens"} <= services, services
    for expected in (
        ("pagewire-router", "apply batch"),
        ("pagewire-router", "profile lookup"),
        ("pagewire-router", "graph GET {id}"),
        ("pagewire-tokens", "/pagewire.tokens.v1.TokensService/DecryptToken"),
    ):
        assert expected in applied_names, (expected, span_tree(applied))
    assert any(s.attributes.get("db.system") == "postgresql" for s in applied)
    assert any(s.attributes.get("db.system") == "redis" for s in applied)
    assert receiver.requests["http"] and receiver.requests["grpc"]
    print(f"\ntrace {trace_id}\n{span_tree(spans)}")  # the note's span tree (pytest -s)
    print(f"\napply trace {applied_id}\n{span_tree(applied)}")

    # /metrics moved for ok, bad signature, duplicate and parked.
    gateway = scraped["gateway"]
    fb = {"platform": "facebook"}
    assert value(gateway, "pagewire_webhooks_received_total", **fb, outcome="ok") == 3
    assert value(gateway, "pagewire_webhooks_received_total", **fb, outcome="bad_signature") == 1
    # Appended for the first time: the new contact's message and the stray page's (parked
    # later, by the apply stage).
    assert value(gateway, "pagewire_webhook_events_total", **fb, result="stored") == 2
    assert value(gateway, "pagewire_webhook_events_total", **fb, result="duplicate") == 1
    router = scraped["router"]
    assert value(router, "pagewire_events_duplicate_total", **fb) == 1
    assert value(router, "pagewire_events_parked_total", **fb) == 1
    assert value(router, "pagewire_events_ingested_total", **fb, kind="message") == 3
    # The sender waits for its conversation's lock (apply batches never wait: they skip).
    assert value(router, "pagewire_lock_wait_seconds_count", lock="conversation") >= 1
    assert value(router, "pagewire_events_applied_total") >= 1
    assert value(router, "pagewire_apply_lag_seconds_count") >= 1
    assert value(router, "pagewire_sends_total", outcome="accepted") == 1
    assert value(router, "pagewire_graph_calls_total", method="POST", code="ok") >= 1
    tokens = scraped["tokens"]
    assert value(tokens, "pagewire_decrypt_token_calls_total", caller="router", outcome="OK") >= 1
    assert "pagewire_pages{" in scraped["subscriptions"]
    print("\n".join(x for x in gateway.splitlines() if x.startswith("pagewire_webhooks")))

    # Nothing exported — span, metric label, log line — holds a token or a message's text.
    secrets = {f"token of {page}": token for page, token in PAGE_TOKENS.items()} | {
        "inbound text": INBOUND_TEXT,
        "inbound text (JSON-escaped)": json.dumps(INBOUND_TEXT)[1:-1],
        "reply text": REPLY_TEXT,
        "reply text (JSON-escaped)": json.dumps(REPLY_TEXT)[1:-1],
        "verify token": VERIFY_TOKEN,
        "app secret": APP_SECRET,
    }
    exported = {f"span {s.service}/{s.name}": s.text() for s in receiver.spans}
    exported |= {f"metric labels of {name}": metric_labels(text) for name, text in scraped.items()}
    logs = stack.logs()
    assert len(receiver.spans) > 50 and len(logs) > 1000
    assert leaks(secrets, {"service logs": logs}) == []
    # Spans and metrics name a conversation only by its key's hash, never the person's id.
    assert leaks({**secrets, "the person's id": USER}, exported) == []
