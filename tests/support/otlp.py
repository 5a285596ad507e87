"""A small OTLP trace receiver for tests: OTLP/HTTP (protobuf) and OTLP/gRPC on free ports.

Service processes are pointed at it with the standard variables
(`OTEL_TRACES_EXPORTER=otlp`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
`OTEL_EXPORTER_OTLP_ENDPOINT`), exactly as at a collector; every span it
receives is kept, flattened, with the service.name of the process that sent it.
"""

from __future__ import annotations

import asyncio
import gzip
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
import uvicorn
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.waiting import free_port, wait_for


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, decoded: ids as hex, attributes as plain values."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]
    events: tuple[tuple[str, dict[str, object]], ...]
    status: str
    resource: dict[str, object]
    start_ns: int = 0
    # Trace ids of the spans this one links to (an apply batch: the webhooks it applies).
    linked_traces: tuple[str, ...] = ()

    def text(self) -> str:
        """Everything this span exported, as text, for scanning."""
        parts = [self.service, self.name, self.status]
        parts += [f"{k}={v}" for k, v in self.attributes.items()]
        parts += [f"{k}={v}" for k, v in self.resource.items()]
        for name, attributes in self.events:
            parts.append(name)
            parts += [f"{k}={v}" for k, v in attributes.items()]
        return "\n".join(parts)


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attributes(items) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {kv.key: _value(kv.value) for kv in items}


@dataclass
class OtlpReceiver:
    """Collects spans sent over OTLP/HTTP (`http_endpoint`) and OTLP/gRPC (`grpc_endpoint`)."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    http_port: int = 0
    grpc_port: int = 0
    _http: uvicorn.Server | None = None
    _http_task: asyncio.Task[None] | None = None
    _grpc: grpc.aio.Server | None = None

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def env(self, protocol: str) -> dict[str, str]:
        """The OTEL_* variables of a process exporting here over `protocol`."""
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            # Export within a fraction of a second, not the default five.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }

    def accept(self, request: trace_service_pb2.ExportTraceServiceRequest, via: str) -> None:
        self.requests[via] += 1
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            events=tuple((e.name, _attributes(e.attributes)) for e in span.events),
                            status=span.status.message,
                            resource=resource,
                            start_ns=span.start_time_unix_nano,
                            linked_traces=tuple(link.trace_id.hex() for link in span.links),
                        )
                    )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for_spans(self, predicate, *, timeout: float = 20, what: str) -> None:  # type: ignore[no-untyped-def]
        await wait_for(lambda: predicate(self.spans), timeout=timeout, what=what)

    async def start(self) -> None:
        receiver = self

        async def traces(request: Request) -> Response:
            body = await request.body()
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            receiver.accept(trace_service_pb2.ExportTraceServiceRequest.FromString(body), "http")
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            return Response(reply, media_type="application/x-protobuf")

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
                receiver.accept(request, "grpc")
                return trace_service_pb2.ExportTraceServiceResponse()

        self.http_port = free_port()
        app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.http_port, log_config=None, access_log=False
        )
        self._http = uvicorn.Server(config)
        self._http.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._http_task = asyncio.create_task(self._http.serve())
        await wait_for(lambda: self._http is not None and self._http.started, what="OTLP/HTTP")

        self._grpc = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        await self._grpc.start()

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(0)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task


def span_tree(spans: list[ReceivedSpan]) -> str:
    """One trace as an indented tree: `name  [service]`, children under their parent."""
    by_parent: dict[str, list[ReceivedSpan]] = defaultdict(list)
    ids = {s.span_id for s in spans}
    for span in spans:
        by_parent[span.parent_id if span.parent_id in ids else ""].append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: s.start_ns):
            lines.append(f"{'  ' * depth}{span.name}  [{span.service}]")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)
