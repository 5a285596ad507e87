"""The gateway's HTTP app: Meta's verify handshake, signed webhook POSTs, health probes, metrics.

A POST is answered 200 only after the router's `Ingest` returned OK, so a 200
always means the events are stored (guarantee 1); anything else is a 503 and
Meta delivers again. Each POST is counted by platform and outcome and, while
tracing is on, is the root span of its trace (signature check and
normalization are its children; the router's spans join through `Ingest`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pagewire.kit import telemetry
from pagewire.kit.channels import open_channel
from pagewire.kit.metrics import exposition
from pagewire.kit.settings import Secret
from pagewire.kit.tls import GrpcSecurity
from pagewire.proto import router_pb2, router_pb2_grpc
from services.gateway import metrics
from services.gateway.config import GatewaySettings
from services.gateway.normalize import (
    MalformedEnvelope,
    normalize_envelope,
    parse_envelope,
    platform_of,
)
from services.gateway.signature import (
    LEGACY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    signature_problem,
)

log = logging.getLogger("pagewire.gateway")
tracer = telemetry.tracer("pagewire.gateway")

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
READY_TIMEOUT_S = 1.0
# The asyncio guard fires just after the gRPC deadline, so the router sees the deadline
# itself (and can stop working) rather than a cancelled stream.
_DEADLINE_MARGIN_S = 0.25

IngestFn = Callable[[router_pb2.IngestRequest, float], Awaitable[object]]
"""Sends one IngestRequest with a timeout in seconds; returns once the router committed."""

ReadyFn = Callable[[float], Awaitable[bool]]
"""True when the router can take traffic, answered within the timeout in seconds."""

Router = IngestFn | router_pb2_grpc.RouterServiceStub


@dataclass(frozen=True)
class _Channel:
    """A webhook path: its platform name (for logs) and the secret that signs its bodies."""

    name: str
    secret: Secret


class _RouterLink:
    """How the endpoints reach the router; filled at startup when the app opens the channel."""

    def __init__(self, ingest: IngestFn | None, ready: ReadyFn | None) -> None:
        self.ingest = ingest
        self.ready = ready


def create_app(
    settings: GatewaySettings,
    ingest: Router | None = None,
    *,
    ready: ReadyFn | None = None,
    security: GrpcSecurity | None = None,
) -> Starlette:
    """The Starlette app.

    `ingest` is None in production: the app's lifespan opens one channel to
    `settings.router_addr`, uses it for `Ingest` and for readiness (the router's
    gRPC health service), and closes it on shutdown. Tests may pass a
    `RouterServiceStub` or any `async (request, timeout_s)` callable instead, and
    `ready` for /readyz (without it an injected router counts as ready).
    """
    link = _RouterLink(_as_ingest_fn(ingest), ready)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if ingest is not None:
            yield
            return
        # Mutual TLS with the gateway's own certificate (pagewire.kit.tls); plaintext without.
        if security is not None:
            channel = security.channel(settings.router_addr, "router")
        else:
            channel = open_channel(settings.router_addr)
        link.ingest = _as_ingest_fn(router_pb2_grpc.RouterServiceStub(channel))
        link.ready = _health_check(health_pb2_grpc.HealthStub(channel))
        try:
            yield
        finally:
            link.ingest = link.ready = None
            await channel.close()

    facebook = _Channel("facebook", settings.app_secret)
    instagram = _Channel("instagram", settings.instagram_app_secret)
    routes = [
        Route("/webhooks/facebook", _webhook(settings, facebook, link), methods=["GET", "POST"]),
        Route("/webhooks/instagram", _webhook(settings, instagram, link), methods=["GET", "POST"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz(link), methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=telemetry.asgi_middleware())


Endpoint = Callable[[Request], Awaitable[Response]]


def _webhook(settings: GatewaySettings, channel: _Channel, link: _RouterLink) -> Endpoint:
    """One path, two methods: the GET handshake and the POST deliveries."""
    verify = _verify(settings, channel)
    receive = _receive(settings, channel, link)

    async def webhook(request: Request) -> Response:
        return await (receive if request.method == "POST" else verify)(request)

    return webhook


def _verify(settings: GatewaySettings, channel: _Channel) -> Endpoint:
    """Meta's subscription handshake: echo `hub.challenge` when the verify token matches."""
    expected = settings.verify_token.encode()

    async def verify(request: Request) -> Response:
        params = request.query_params
        mode = params.get("hub.mode")
        token = params.get("hub.verify_token")
        challenge = params.get("hub.challenge")
        reason = None
        if mode != "subscribe":
            reason = "mode"
        # Bytes, not str: compare_digest refuses non-ASCII strings, and a query is any text.
        elif token is None or not hmac.compare_digest(token.encode(), expected):
            reason = "token"
        if reason is not None:
            log.warning(
                "verify handshake refused", extra={"platform": channel.name, "reason": reason}
            )
            return PlainTextResponse("forbidden", status_code=403)
        if challenge is None:
            return PlainTextResponse("hub.challenge is missing", status_code=400)
        log.info("verify handshake accepted", extra={"platform": channel.name})
        # Byte for byte: Meta compares the body with the challenge it sent.
        return PlainTextResponse(challenge)

    return verify


def _receive(settings: GatewaySettings, channel: _Channel, link: _RouterLink) -> Endpoint:
    """A webhook POST: size, signature, shape, normalize, one Ingest, then 200."""
    secret = channel.secret.encode()

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        telemetry.annotate(platform=channel.name)
        outcome, response = await handle(request)
        metrics.WEBHOOKS.labels(channel.name, outcome).inc()
        metrics.WEBHOOK_SECONDS.labels(channel.name).observe(time.perf_counter() - started)
        telemetry.annotate(outcome=outcome)
        return response

    async def handle(request: Request) -> tuple[str, Response]:
        try:
            body = await _read_body(request, settings.max_body_bytes)
        except ClientDisconnect:
            # The sender gave up mid-body (Meta redelivers); nobody is left to answer.
            log.debug("webhook sender disconnected", extra={"platform": channel.name})
            return "disconnected", Response(status_code=400)
        if body is None:
            log.warning("webhook body too large", extra={"platform": channel.name})
            # Closing the connection spares reading the rest of an oversized body.
            return "too_large", _json({"error": "body too large"}, 413, close=True)

        with tracer.start_as_current_span("webhook.verify_signature"):
            problem = signature_problem(body, request.headers.get(SIGNATURE_HEADER), secret)
            telemetry.annotate(signature_ok=problem is None)
        if problem is not None:
            if problem == "missing" and request.headers.get(LEGACY_SIGNATURE_HEADER):
                problem = "only the legacy sha1 header"
            # Loud on purpose: a rotated or wrong app secret rejects every real delivery,
            # and Meta disables the subscription after an hour of failures.
            log.warning(
                "webhook signature rejected", extra={"platform": channel.name, "reason": problem}
            )
            return "bad_signature", _json({"error": "bad signature"}, 401)

        reason, ours, events = "", False, []
        with tracer.start_as_current_span("webhook.normalize"):
            try:
                envelope = parse_envelope(body)
            except MalformedEnvelope as exc:
                reason = str(exc)
                envelope = None
            else:
                ours = platform_of(envelope) is not None
                events = normalize_envelope(envelope) if ours else []
                telemetry.annotate(event_count=len(events))
        if envelope is None:
            log.warning(
                "webhook body malformed", extra={"platform": channel.name, "reason": reason}
            )
            return "malformed", _json({"error": "malformed body"}, 400)

        if not ours:
            # Debug, not info: the metric counts these, and a flood of them would be noise.
            log.debug(
                "webhook object ignored",
                extra={"platform": channel.name, "object": str(envelope.get("object"))[:64]},
            )
            return "ignored", _json({"status": "ignored", "events": 0}, 200)

        if not events:
            log.debug("webhook carried no events", extra={"platform": channel.name})
            return "ok", _json({"status": "ok", "events": 0}, 200)

        ok, reply = await _forward(link, router_pb2.IngestRequest(events=events), settings, channel)
        if not ok:
            return "unavailable", _json({"error": "router unavailable"}, 503)
        _count_events(channel.name, reply)
        log.debug("webhook ingested", extra={"platform": channel.name, "events": len(events)})
        return "ok", _json({"status": "ok", "events": len(events)}, 200)

    return receive


def _count_events(platform: str, reply: object) -> None:
    """What the router did with the events, from its IngestResponse (counts only)."""
    for result, field in (("stored", "stored"), ("duplicate", "duplicates"), ("parked", "parked")):
        count = getattr(reply, field, 0)
        if isinstance(count, int) and count > 0:
            metrics.WEBHOOK_EVENTS.labels(platform, result).inc(count)
            telemetry.annotate(**{f"events_{field}": count})


async def _forward(
    link: _RouterLink,
    request: router_pb2.IngestRequest,
    settings: GatewaySettings,
    channel: _Channel,
) -> tuple[bool, object]:
    """One Ingest with the deadline, and its reply; False on any failure, so Meta retries."""
    ingest = link.ingest
    if ingest is None:
        log.error("router link not open", extra={"platform": channel.name})
        return False, None
    timeout = settings.ingest_timeout_s
    extra = {"platform": channel.name, "events": len(request.events)}
    try:
        async with asyncio.timeout(timeout + _DEADLINE_MARGIN_S):
            reply = await ingest(request, timeout)
    except grpc.aio.AioRpcError as exc:
        log.warning("router ingest failed", extra={**extra, "code": exc.code().name})
        return False, None
    except TimeoutError:
        log.warning("router ingest failed", extra={**extra, "code": "DEADLINE_EXCEEDED"})
        return False, None
    except Exception:
        log.exception("router ingest failed", extra=extra)
        return False, None
    return True, reply


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None once it is known to exceed `limit` bytes.

    Content-Length is checked first; the streamed count also stops a chunked body,
    which has no Content-Length, as soon as it passes the limit.
    """
    declared = request.headers.get("content-length", "").strip()
    # isascii first: str.isdigit also accepts digits int() refuses, such as "²".
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _metrics(request: Request) -> Response:
    """Prometheus' scrape: this process's metrics in the text format."""
    body, content_type = exposition()
    return Response(body, headers={"content-type": content_type})


async def _healthz(request: Request) -> Response:
    """Liveness: the process answers. It never depends on the router."""
    return _json({"status": "ok"}, 200)


def _readyz(link: _RouterLink) -> Endpoint:
    """Readiness: the router's health service answers SERVING within about a second."""

    async def readyz(request: Request) -> Response:
        check = link.ready
        if link.ingest is None:
            ok = False
        elif check is None:
            ok = True
        else:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S + _DEADLINE_MARGIN_S):
                    ok = await check(READY_TIMEOUT_S)
            except Exception:
                ok = False
        if not ok:
            log.debug("not ready: router not serving")
            return _json({"status": "unavailable"}, 503)
        return _json({"status": "ok"}, 200)

    return readyz


def _as_ingest_fn(router: Router | None) -> IngestFn | None:
    if router is None or not isinstance(router, router_pb2_grpc.RouterServiceStub):
        return router

    async def ingest(request: router_pb2.IngestRequest, timeout: float) -> object:
        # wait_for_ready: while a router replica restarts, hold the POST until the channel
        # reconnects (within the deadline) instead of failing it at once with 503.
        return await router.Ingest(request, timeout=timeout, wait_for_ready=True)

    return ingest


def _health_check(health: health_pb2_grpc.HealthStub) -> ReadyFn:
    async def ready(timeout: float) -> bool:
        try:
            response = await health.Check(
                health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    return ready


def _json(content: dict[str, object], status: int, *, close: bool = False) -> JSONResponse:
    headers = {"connection": "close"} if close else None
    return JSONResponse(content, status_code=status, headers=headers)
