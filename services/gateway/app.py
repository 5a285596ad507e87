"""The gateway's HTTP app: Meta's verify handshake, signed webhook POSTs, health probes, metrics.

A POST is answered 200 only after the router's `Ingest` returned OK, so a 200
means the events are stored (guarantee 1; the one exception, `rejected`, below);
a router failure is a 503 and Meta delivers again. A POST of more than
`contract.MAX_EVENTS_PER_CALL` events is sent as several Ingest calls at once
(events are idempotent), each with the POST's deadline, and is answered 200 only
when all of them succeeded. The one router answer that is not a 503 is
INVALID_ARGUMENT: the router refusing what the gateway built is a bug on our
side that a redelivery cannot fix (Meta would redeliver it for ever, then
disable the subscription), so it is answered 200, counted as `rejected`,
alerted on, and logged once with the body redacted.

The path decides the platform: its secret checks the signature and its platform
goes on the events, and a body whose `object` names the other platform is
refused. Each POST is counted by platform and outcome and, while tracing is on,
is the root span of its trace (signature check and normalization are its
children; the router's spans join through `Ingest`).

Internet-facing limits: at most `max_concurrency` POSTs in flight per process (the
next is a 503 with Retry-After, its body unread), a body must arrive within
`body_timeout_s` (else 408), and `max_items` items per POST (else 413, counted
before normalizing). The request-header deadline lives in the uvicorn protocol
(services/gateway/protocol.py): the app is not called before the headers are in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pagewire.contract import MAX_EVENTS_PER_CALL, Platform
from pagewire.kit import telemetry
from pagewire.kit.channels import open_channel
from pagewire.kit.metrics import exposition
from pagewire.kit.settings import Secret
from pagewire.kit.tls import GrpcSecurity
from pagewire.normalize import (
    OBJECTS,
    MalformedEnvelope,
    TooManyItems,
    normalize_envelope,
    parse_envelope,
    platform_of,
)
from pagewire.proto import events_pb2, router_pb2, router_pb2_grpc
from services.gateway import metrics
from services.gateway.config import GatewaySettings
from services.gateway.redaction import redacted_json
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
# Seconds a POST refused for the in-flight limit is told to wait: a slot frees as soon as
# any POST in flight is answered, usually within milliseconds.
RETRY_AFTER_S = 1
# Router answers a redelivery can fix (a replica or PostgreSQL down, a lock wait or the
# deadline exceeded, the router shedding load): 503, and Meta retries. INVALID_ARGUMENT is
# answered 200 (`rejected`); any other code is a 503 too, but logged as an error: a
# misconfiguration (PERMISSION_DENIED, UNAUTHENTICATED) or a bug (INTERNAL) someone must fix.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# The router's message is safe to log (no personal data, style guide); a bound keeps a
# line a line.
_MAX_DETAIL_CHARS = 1000

IngestFn = Callable[[router_pb2.IngestRequest, float], Awaitable[object]]
"""Sends one IngestRequest with a timeout in seconds; returns once the router committed."""

ReadyFn = Callable[[float], Awaitable[bool]]
"""True when the router can take traffic, answered within the timeout in seconds."""

Router = IngestFn | router_pb2_grpc.RouterServiceStub


@dataclass(frozen=True)
class _Channel:
    """A webhook path (`/webhooks/<platform>`): its platform, the secret that signs its
    bodies, and so the only `object` it accepts."""

    platform: Platform
    secret: Secret

    @property
    def name(self) -> str:
        """The platform in logs and metric labels."""
        return self.platform.label

    @property
    def path(self) -> str:
        return f"/webhooks/{self.platform.label}"

    @property
    def object(self) -> str:
        return OBJECTS[self.platform]


@dataclass
class _Delivery:
    """What the Ingest calls of one POST came to: `failed` (answer 503), else the replies of
    the calls the router accepted and the details of those it refused as invalid."""

    failed: bool = False
    replies: list[object] = dataclasses.field(default_factory=list)
    rejected: list[str] = dataclasses.field(default_factory=list)


class _InFlight:
    """Webhook POSTs this process is handling, against `PAGEWIRE_GATEWAY_MAX_CONCURRENCY`.

    One event loop, and no await between `full()` and entering: a plain counter is exact.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def full(self) -> bool:
        return self.count >= self.limit

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1


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

    channels = (
        _Channel(Platform.FACEBOOK, settings.app_secret),
        _Channel(Platform.INSTAGRAM, settings.instagram_app_secret),
    )
    # Shared by both paths: the limit is per process.
    in_flight = _InFlight(settings.max_concurrency)
    routes = [
        *(
            Route(c.path, _webhook(settings, c, link, in_flight), methods=["GET", "POST"])
            for c in channels
        ),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz(link), methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=telemetry.asgi_middleware())


Endpoint = Callable[[Request], Awaitable[Response]]


def _webhook(
    settings: GatewaySettings, channel: _Channel, link: _RouterLink, in_flight: _InFlight
) -> Endpoint:
    """One path, two methods: the GET handshake and the POST deliveries."""
    verify = _verify(settings, channel)
    receive = _receive(settings, channel, link, in_flight)

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


def _receive(
    settings: GatewaySettings, channel: _Channel, link: _RouterLink, in_flight: _InFlight
) -> Endpoint:
    """A webhook POST: a slot, size and time, signature, shape, normalize, Ingest, then 200."""
    secret = channel.secret.encode()

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        telemetry.annotate(platform=channel.name)
        if in_flight.full():
            # Debug, not warning: the metric counts these, and overload would flood the log.
            log.debug("webhook refused: too many in flight", extra={"platform": channel.name})
            outcome, response = "overloaded", _overloaded()
        else:
            with in_flight:
                outcome, response = await handle(request)
        metrics.WEBHOOKS.labels(channel.name, outcome).inc()
        metrics.WEBHOOK_SECONDS.labels(channel.name).observe(time.perf_counter() - started)
        telemetry.annotate(outcome=outcome)
        return response

    async def handle(request: Request) -> tuple[str, Response]:
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                body = await _read_body(request, settings.max_body_bytes)
        except TimeoutError:
            log.warning(
                "webhook body not received in time",
                extra={"platform": channel.name, "body_timeout_s": settings.body_timeout_s},
            )
            # Closing frees the connection the slow sender was holding.
            return "body_timeout", _json({"error": "body not received in time"}, 408, close=True)
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

        with tracer.start_as_current_span("webhook.normalize"):
            outcome, answer, envelope, events = _unpack(body, channel, settings.max_items)
            if answer is None:
                telemetry.annotate(event_count=len(events))
        if answer is not None:
            return outcome, answer

        if not events:
            log.debug("webhook carried no events", extra={"platform": channel.name})
            return "ok", _json({"status": "ok", "events": 0}, 200)

        delivery = await _forward(link, events, settings, channel)
        if delivery.failed:
            return "unavailable", _json({"error": "router unavailable"}, 503)
        for reply in delivery.replies:
            _count_events(channel.name, reply)
        if delivery.rejected:
            _log_rejected(channel, delivery.rejected, envelope, len(events))
            return "rejected", _json({"status": "rejected", "events": len(events)}, 200)
        log.debug("webhook ingested", extra={"platform": channel.name, "events": len(events)})
        return "ok", _json({"status": "ok", "events": len(events)}, 200)

    return receive


def _unpack(
    body: bytes, channel: _Channel, max_items: int
) -> tuple[str, Response | None, Mapping[str, Any], list[events_pb2.Event]]:
    """Parse, check `object` against the path, normalize: the envelope and its events, or
    the answer instead.

    The item cap is checked as soon as the body is decoded, so an oversized POST costs a
    parse and never a normalization. An `object` other than the path's is refused with 400:
    a body signed with the Messenger secret must not carry Instagram events, and an object
    Pagewire does not read (user, permissions, whatsapp_business_account, none) must not
    be acknowledged and dropped — the 400 tells whoever subscribed it to this path.
    """
    try:
        envelope = parse_envelope(body, max_items=max_items)
    except TooManyItems as exc:
        log.warning(
            "webhook has too many items", extra={"platform": channel.name, "max_items": exc.limit}
        )
        answer = _json({"error": "too many items", "detail": str(exc)}, 413)
        return "too_many_items", answer, {}, []
    except MalformedEnvelope as exc:
        log.warning("webhook body malformed", extra={"platform": channel.name, "reason": str(exc)})
        return "malformed", _json({"error": "malformed body", "detail": str(exc)}, 400), {}, []

    claimed = platform_of(envelope)
    if claimed is not channel.platform:
        # Not acknowledged: a 200 would drop a signed body nobody here reads.
        log.warning(
            "webhook object does not match its path",
            extra={"platform": channel.name, "object": str(envelope.get("object"))[:64]},
        )
        detail = f'{channel.path} accepts only "object": "{channel.object}"'
        return "wrong_object", _json({"error": "wrong object", "detail": detail}, 400), {}, []
    events = normalize_envelope(envelope, platform=channel.platform, on_demoted=_demoted(channel))
    return "ok", None, envelope, events


def _demoted(channel: _Channel) -> Callable[[events_pb2.Event, str], None]:
    """Counts an item sent as `<kind>:invalid`; the reason names a field, never a value."""

    def count(event: events_pb2.Event, reason: str) -> None:
        kind = event.WhichOneof("kind") or "none"
        metrics.EVENTS_DEMOTED.labels(channel.name, kind).inc()
        log.debug(
            "item kept raw: it breaks the event contract",
            extra={"platform": channel.name, "kind": kind, "reason": reason},
        )

    return count


def _log_rejected(
    channel: _Channel, details: list[str], envelope: Mapping[str, Any], events: int
) -> None:
    """One warning per rejected POST: the router's reason and the body, redacted (ids, kinds
    and times only: customers' text never reaches a log)."""
    log.warning(
        "router rejected a webhook's events as invalid; acknowledged, not stored",
        extra={
            "platform": channel.name,
            "code": grpc.StatusCode.INVALID_ARGUMENT.name,
            "detail": details[0][:_MAX_DETAIL_CHARS],
            "rejected_calls": len(details),
            "events": events,
            "body": redacted_json(envelope),
        },
    )


def _overloaded() -> Response:
    """503 before the body is read; closing spares reading the body nobody will use."""
    response = _json(
        {"error": "overloaded", "detail": "too many webhooks in flight"}, 503, close=True
    )
    response.headers["retry-after"] = str(RETRY_AFTER_S)
    return response


def _count_events(platform: str, reply: object) -> None:
    """What the router did with the events, from its IngestResponse (counts only)."""
    for result, field in (("stored", "stored"), ("duplicate", "duplicates"), ("parked", "parked")):
        count = getattr(reply, field, 0)
        if isinstance(count, int) and count > 0:
            metrics.WEBHOOK_EVENTS.labels(platform, result).inc(count)
            telemetry.annotate(**{f"events_{field}": count})


async def _forward(
    link: _RouterLink,
    events: list[events_pb2.Event],
    settings: GatewaySettings,
    channel: _Channel,
) -> _Delivery:
    """The events in Ingest calls of at most MAX_EVENTS_PER_CALL, all at once, each with the
    POST's deadline; failed when any call failed other than as invalid, so Meta retries
    (the calls that succeeded stored their events, which the retry finds as duplicates)."""
    ingest = link.ingest
    if ingest is None:
        log.error("router link not open", extra={"platform": channel.name})
        return _Delivery(failed=True)
    requests = [
        router_pb2.IngestRequest(events=events[start : start + MAX_EVENTS_PER_CALL])
        for start in range(0, len(events), MAX_EVENTS_PER_CALL)
    ]
    calls = len(requests)
    results = await asyncio.gather(
        *(_ingest_once(ingest, r, settings.ingest_timeout_s, channel, calls) for r in requests)
    )
    delivery = _Delivery()
    for verdict, value in results:
        if verdict == "ok":
            delivery.replies.append(value)
        elif verdict == "rejected":
            delivery.rejected.append(str(value))
        else:
            delivery.failed = True
    return delivery


async def _ingest_once(
    ingest: IngestFn,
    request: router_pb2.IngestRequest,
    timeout: float,
    channel: _Channel,
    calls: int,
) -> tuple[str, object]:
    """One Ingest: ("ok", reply), ("rejected", the router's detail) or ("failed", None)."""
    extra = {"platform": channel.name, "events": len(request.events), "calls": calls}
    try:
        async with asyncio.timeout(timeout + _DEADLINE_MARGIN_S):
            reply = await ingest(request, timeout)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return "rejected", exc.details() or ""
        # CANCELLED: the channel closing under the call (a shutdown), not a bug.
        transient = code in TRANSIENT_CODES or code == grpc.StatusCode.CANCELLED
        level = logging.WARNING if transient else logging.ERROR
        log.log(level, "router ingest failed", extra={**extra, "code": code.name})
        return "failed", None
    except TimeoutError:
        log.warning("router ingest failed", extra={**extra, "code": "DEADLINE_EXCEEDED"})
        return "failed", None
    except Exception:
        log.exception("router ingest failed", extra=extra)
        return "failed", None
    return "ok", reply


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
