"""Tracing for every service: the OTEL_* settings, the tracer provider, and what is instrumented.

Each composition root calls `setup(service, environ)` first thing; whatever it
builds afterwards — gRPC channels and servers (pagewire.kit), engines, the Redis
client, the Graph client's httpx transport, the gateway's app — is instrumented
when tracing is on and left untouched when it is off, so a service without an
exporter pays nothing. The exporter comes from the standard variables:
`OTEL_TRACES_EXPORTER` (`none` — also when unset —, `otlp`, `console`),
`OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default, or `http/protobuf`),
`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_SAMPLER`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`.

What a span may carry (DESIGN guarantee 6): ids, counts, kinds, outcomes, and a
hash of the conversation key — never a token, a message's text, a header or a
query string. The instrumentations are configured so: headers are never
captured without `authorization` and kin being redacted, query strings are
dropped from URLs, the gateway ignores trace context sent from the internet (its
request span is a root), and health checks, probes and /metrics make no spans.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from pagewire.kit.settings import SettingsError

log = logging.getLogger("pagewire.telemetry")

EXPORTERS = ("none", "otlp", "console")
PROTOCOLS = ("grpc", "http/protobuf")
# gRPC services that make no spans: probes and reflection.
UNTRACED_GRPC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
# Gateway paths that make no spans: probes every few seconds, and the scraper.
UNTRACED_PATHS = ("/healthz", "/readyz", "/metrics")
# Redacted whenever an operator asks the HTTP instrumentations to capture headers.
SENSITIVE_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-hub-signature",
    "x-hub-signature-256",
)
_CAPTURE_VARS = (
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
)
_SANITIZE_VAR = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"
# W3C trace context and baggage: dropped from requests that come from the internet.
_CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
ATTRIBUTE_PREFIX = "pagewire."

# The provider of this process once tracing is on; None while it is off.
_active: TracerProvider | None = None


@dataclass(frozen=True)
class TracingSettings:
    """Which exporters, over which protocol, under which service name."""

    service_name: str
    exporters: tuple[str, ...] = ()
    protocol: str = "grpc"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], service: str) -> TracingSettings:
        """Reads the standard variables; an unknown exporter or protocol names the variable."""
        name = f"pagewire-{service}"
        if _truthy(environ.get("OTEL_SDK_DISABLED", "")):
            return cls(name)
        raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "none"
        exporters = tuple(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
        for exporter in exporters:
            if exporter not in EXPORTERS:
                raise SettingsError(
                    f"OTEL_TRACES_EXPORTER: {exporter[:32]!r} is not one of {', '.join(EXPORTERS)}"
                )
        protocol_var = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        protocol = environ.get(protocol_var, "").strip()
        if not protocol:
            protocol_var = "OTEL_EXPORTER_OTLP_PROTOCOL"
            protocol = environ.get(protocol_var, "").strip() or "grpc"
        if protocol not in PROTOCOLS:
            raise SettingsError(f"{protocol_var}: {protocol[:32]!r} is not grpc or http/protobuf")
        return cls(name, tuple(e for e in exporters if e != "none"), protocol)


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class Telemetry:
    """A process's tracing: `shutdown` flushes what is still buffered (call it last)."""

    settings: TracingSettings
    provider: TracerProvider | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    async def shutdown(self) -> None:
        """Exports the spans still buffered and stops the exporters; safe to call twice."""
        if self.provider is None or self._closed:
            return
        self._closed = True
        # The exporters block on the network for up to their timeout: not on the loop.
        await asyncio.to_thread(self.provider.shutdown)


def setup(
    service: str,
    environ: Mapping[str, str],
    *,
    exporter: SpanExporter | None = None,
) -> Telemetry:
    """Turns tracing on for this process as the environment says (or with `exporter`).

    Call once, from the composition root, before building channels, engines and
    clients. With no exporter configured it returns a disabled Telemetry and
    instruments nothing.
    """
    settings = TracingSettings.from_env(environ, service)
    exporters = [exporter] if exporter is not None else _exporters(settings)
    if not exporters:
        return Telemetry(settings)
    guard_header_capture(os.environ)
    provider = TracerProvider(resource=_resource(settings.service_name))
    for item in exporters:
        provider.add_span_processor(BatchSpanProcessor(item))
    install(provider)
    log.info(
        "tracing",
        extra={
            "service_name": _resource_name(provider),
            "exporters": list(settings.exporters) or [type(exporters[0]).__name__],
            "protocol": settings.protocol,
        },
    )
    return Telemetry(settings, provider)


def _exporters(settings: TracingSettings) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in settings.exporters:
        if name == "console":
            exporters.append(ConsoleSpanExporter(service_name=settings.service_name))
        elif settings.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpSpanExporter,
            )

            exporters.append(HttpSpanExporter())
    return exporters


def _resource(default_name: str) -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME as given; else service.name = ours."""
    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        return detected.merge(Resource({SERVICE_NAME: default_name}))
    return detected


def _resource_name(provider: TracerProvider) -> str:
    return str(provider.resource.attributes.get(SERVICE_NAME, ""))


def install(provider: TracerProvider) -> None:
    """Makes `provider` this process's, for the OTel API and for what is built from now on.

    The API's global provider can be set once per process; tests that install
    several providers in one process get the first as the global one, which is
    why the instrumentations here are always handed `provider` explicitly.
    """
    global _active
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    _active = provider


def uninstall() -> None:
    """Turns instrumentation of what is built from now on off again (tests)."""
    global _active
    _active = None


def active() -> TracerProvider | None:
    """The process's provider while tracing is on."""
    return _active


def tracing_enabled() -> bool:
    return _active is not None


def guard_header_capture(environ: MutableMapping[str, str]) -> None:
    """When an operator asks the HTTP instrumentations to capture headers, credentials
    among them are still redacted: SENSITIVE_HEADERS are added to the sanitize list."""
    if not any(environ.get(name) for name in _CAPTURE_VARS):
        return
    listed = [p.strip() for p in environ.get(_SANITIZE_VAR, "").split(",") if p.strip()]
    missing = [h for h in SENSITIVE_HEADERS if h not in {p.lower() for p in listed}]
    if missing:
        environ[_SANITIZE_VAR] = ",".join([*listed, *missing])


# --- spans of our own -------------------------------------------------------------------


_NO_OP = trace.NoOpTracer()


class _Tracer:
    """A tracer that asks for the active provider at each span, so modules can hold one
    from import time while tracing is switched on later (or per test)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cached: tuple[TracerProvider, trace.Tracer] | None = None

    def _tracer(self) -> trace.Tracer:
        provider = _active
        if provider is None:
            return _NO_OP
        cached = self._cached
        if cached is None or cached[0] is not provider:
            cached = self._cached = (provider, provider.get_tracer(self._name))
        return cached[1]

    def start_as_current_span(self, name: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        return self._tracer().start_as_current_span(name, **kwargs)


def tracer(name: str) -> _Tracer:
    """The tracer a module makes its own spans with (`with tracer.start_as_current_span(…)`)."""
    return _Tracer(name)


def annotate(**attributes: str | int | bool) -> None:
    """Adds `pagewire.<name>` attributes to the current span (nothing when not tracing).

    Only ids, counts, kinds and outcomes belong here: never a token or a message's text.
    """
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({ATTRIBUTE_PREFIX + k: v for k, v in attributes.items()})


def key_hash(key: str) -> str:
    """A short, stable digest of a conversation key: joins spans and logs of one
    conversation without naming the person in it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def traceparent() -> str:
    """The current span as a W3C `traceparent` ("" when not tracing): stored beside work
    done later by another trace (an apply batch links back to the webhooks it applies)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def links(parents: Iterable[str], limit: int = 32) -> list[trace.Link]:
    """Span links to the `traceparent`s given (at most `limit`, malformed ones skipped)."""
    out: list[trace.Link] = []
    for value in dict.fromkeys(p for p in parents if p):
        parts = value.split("-")
        if len(parts) != 4:
            continue
        try:
            context = trace.SpanContext(
                int(parts[1], 16),
                int(parts[2], 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(int(parts[3], 16)),
            )
        except ValueError:
            continue
        if context.is_valid:
            out.append(trace.Link(context))
        if len(out) >= limit:
            break
    return out


def capture() -> otel_context.Context:
    """The current trace context, to continue it in work that runs later (a queue)."""
    return otel_context.get_current()


class continued:
    """`with continued(ctx):` runs the block inside a context `capture` returned."""

    def __init__(self, ctx: otel_context.Context | None) -> None:
        self._ctx = ctx
        self._token: object | None = None

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._token = otel_context.attach(self._ctx)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]


# --- instrumentation of what the kit builds ----------------------------------------------


def _grpc_filter():  # type: ignore[no-untyped-def]
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(
        filters.any_of(*(filters.service_name(name) for name in UNTRACED_GRPC_SERVICES))
    )


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The tracing interceptor of a gRPC server: the caller's `traceparent` continues here."""
    if _active is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_active, filter_=_grpc_filter())]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The tracing interceptors of a gRPC channel: each call carries `traceparent`."""
    if _active is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_active, filter_=_grpc_filter()))


def instrument_engine(engine: Any) -> None:
    """A span per SQL statement of `engine` (an AsyncEngine or Engine): the statement
    with its placeholders, never the bound values."""
    if _active is None:
        return
    from opentelemetry import metrics
    from opentelemetry.instrumentation.sqlalchemy import engine as instrumented
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from sqlalchemy import event

    sync_engine = getattr(engine, "sync_engine", engine)
    usage = metrics.get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    EngineTracer(
        _active.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__),
        sync_engine,
        usage,
    )
    # The instrumentation writes the driver's message into a failed statement's span
    # status, and PostgreSQL's can quote the row ("Failing row contains (...)"): ours
    # writes what the logs may show instead.
    if event.contains(sync_engine, "handle_error", instrumented._handle_error):
        event.remove(sync_engine, "handle_error", instrumented._handle_error)
    event.listen(sync_engine, "handle_error", _failed_statement)


def _failed_statement(context: Any) -> None:
    """Ends a failed statement's span with the error's class and SQLSTATE, not its text."""
    from opentelemetry.trace import Status, StatusCode

    from pagewire.kit.logs import database_error_summary

    span = getattr(context.execution_context, "_otel_span", None)
    if span is None:
        return
    if span.is_recording():
        error = context.original_exception
        summary = database_error_summary(error) or type(error).__name__
        span.set_status(Status(StatusCode.ERROR, summary))
    span.end()


def instrument_redis(client: Any) -> None:
    """A span per Redis command (the command name only: arguments are replaced by `?`)."""
    if _active is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=_active)


def httpx_transport(transport: Any = None) -> Any:
    """The transport an httpx.AsyncClient should use: traced, URLs without their query."""
    if _active is None:
        return transport
    import httpx
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

    return AsyncOpenTelemetryTransport(
        transport or httpx.AsyncHTTPTransport(),
        tracer_provider=_active,
        request_hook=_scrub_client_url,
    )


async def _scrub_client_url(span: trace.Span, request: Any) -> None:
    """The URL without its query (appsecret_proof and the like live there) and with numeric
    path segments as `{id}` (a profile lookup's path is the person's id)."""
    if not span.is_recording():
        return
    url = request.url
    path = "/".join("{id}" if part.isdigit() else part for part in url.path.split("/"))
    _replace_urls(span, str(url.copy_with(query=None, path="/")).removesuffix("/") + path)


def _replace_urls(span: trace.Span, url: str) -> None:
    present = getattr(span, "attributes", None) or {}
    for key in ("http.url", "url.full"):
        if key in present:
            span.set_attribute(key, url)
    if "url.query" in present:
        span.set_attribute("url.query", "REDACTED")


def asgi_middleware() -> list[Any]:
    """Starlette middleware for the gateway: one server span per request, a root.

    Trace context from the internet is dropped first (Meta sends none; anyone
    else could force sampling or join our traces); health, readiness and
    /metrics make no spans; the query (the verify handshake's token) is dropped
    from the recorded URL.
    """
    if _active is None:
        return []
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    return [
        Middleware(_DropTraceContext),
        Middleware(
            OpenTelemetryMiddleware,
            excluded_urls=",".join(UNTRACED_PATHS),
            tracer_provider=_active,
            server_request_hook=_scrub_server_url,
            exclude_spans=["receive", "send"],
        ),
    ]


def _scrub_server_url(span: trace.Span, scope: dict[str, Any]) -> None:
    if span.is_recording() and scope.get("query_string"):
        from opentelemetry.instrumentation.asgi import get_host_port_url_tuple

        _replace_urls(span, get_host_port_url_tuple(scope)[2])


class _DropTraceContext:
    """ASGI middleware removing W3C trace context headers from incoming requests."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            headers: Sequence[tuple[bytes, bytes]] = scope.get("headers") or ()
            if any(name.lower() in _CONTEXT_HEADERS for name, _ in headers):
                scope = dict(scope)
                scope["headers"] = [h for h in headers if h[0].lower() not in _CONTEXT_HEADERS]
        await self.app(scope, receive, send)
