"""The gateway's HTTP app: Meta's verify handshake, signed webhook POSTs, health probes.

A POST is answered 200 only after the router's `Ingest` returned OK, so a 200
always means the events are stored (guarantee 1); anything else is a 503 and
Meta delivers again.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pagewire.kit.channels import open_channel
from pagewire.kit.settings import Secret
from pagewire.kit.tls import GrpcSecurity
from pagewire.proto import router_pb2, router_pb2_grpc
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
    ]
    return Starlette(routes=routes, lifespan=lifespan)


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
        try:
            body = await _read_body(request, settings.max_body_bytes)
        except ClientDisconnect:
            # The sender gave up mid-body (Meta redelivers); nobody is left to answer.
            log.debug("webhook sender disconnected", extra={"platform": channel.name})
            return Response(status_code=400)
        if body is None:
            log.warning("webhook body too large", extra={"platform": channel.name})
            # Closing the connection spares reading the rest of an oversized body.
            return _json({"error": "body too large"}, 413, close=True)

        problem = signature_problem(body, request.headers.get(SIGNATURE_HEADER), secret)
        if problem is not None:
            if problem == "missing" and request.headers.get(LEGACY_SIGNATURE_HEADER):
                problem = "only the legacy sha1 header"
            # Loud on purpose: a rotated or wrong app secret rejects every real delivery,
            # and Meta disables the subscription after an hour of failures.
            log.warning(
                "webhook signature rejected", extra={"platform": channel.name, "reason": problem}
            )
            return _json({"error": "bad signature"}, 401)

        try:
            envelope = parse_envelope(body)
        except MalformedEnvelope as exc:
            log.warning(
                "webhook body malformed", extra={"platform": channel.name, "reason": str(exc)}
            )
            return _json({"error": "malformed body"}, 400)

        if platform_of(envelope) is None:
            obj = envelope.get("object")
            log.info(
                "webhook object ignored",
                extra={"platform": channel.name, "object": str(obj)[:64]},
            )
            return _json({"status": "ignored", "events": 0}, 200)

        events = normalize_envelope(envelope)
        if not events:
            log.debug("webhook carried no events", extra={"platform": channel.name})
            return _json({"status": "ok", "events": 0}, 200)

        if not await _forward(link, router_pb2.IngestRequest(events=events), settings, channel):
            return _json({"error": "router unavailable"}, 503)
        log.debug("webhook ingested", extra={"platform": channel.name, "events": len(events)})
        return _json({"status": "ok", "events": len(events)}, 200)

    return receive


async def _forward(
    link: _RouterLink,
    request: router_pb2.IngestRequest,
    settings: GatewaySettings,
    channel: _Channel,
) -> bool:
    """One Ingest with the deadline; False on any failure, so Meta retries the delivery."""
    ingest = link.ingest
    if ingest is None:
        log.error("router link not open", extra={"platform": channel.name})
        return False
    timeout = settings.ingest_timeout_s
    extra = {"platform": channel.name, "events": len(request.events)}
    try:
        async with asyncio.timeout(timeout + _DEADLINE_MARGIN_S):
            await ingest(request, timeout)
    except grpc.aio.AioRpcError as exc:
        log.warning("router ingest failed", extra={**extra, "code": exc.code().name})
        return False
    except TimeoutError:
        log.warning("router ingest failed", extra={**extra, "code": "DEADLINE_EXCEEDED"})
        return False
    except Exception:
        log.exception("router ingest failed", extra=extra)
        return False
    return True


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
