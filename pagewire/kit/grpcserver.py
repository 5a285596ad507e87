"""The one gRPC server bootstrap every service and every test uses.

Health (`""` and each service name), reflection, the error-mapping
interceptor (behind the tracing one when tracing is on), the authorization
interceptor (pagewire.kit.authz: every call checked against the service's access
table before its handler runs), a maximum connection age so clients rebalance
onto new replicas, and a graceful stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pagewire.kit import telemetry
from pagewire.kit.authz import AuthorizationInterceptor, Policy
from pagewire.kit.db import unavailable_reason
from pagewire.kit.errors import PagewireError

log = logging.getLogger("pagewire.grpc")

Register = Callable[[grpc.aio.Server], None]
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
Closer = Callable[[], Awaitable[None]]


@asynccontextmanager
async def _mapped_errors(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """Domain error → its status; a database that cannot take the work now (down,
    read-only, disk full …) → UNAVAILABLE, with one warning line and no traceback;
    anything else unexpected → INTERNAL with a safe message."""
    try:
        yield
    except PagewireError as exc:
        if exc.status == "UNAVAILABLE":
            log.warning("dependency unavailable", extra={"rpc": method, "reason": str(exc)})
        await context.abort(grpc.StatusCode[exc.status], str(exc))
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as exc:
        reason = unavailable_reason(exc)
        if reason is None:
            log.exception("unhandled error", extra={"rpc": method})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        else:
            log.warning("database unavailable", extra={"rpc": method, "reason": reason})
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"database unavailable ({reason})")


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into status codes and hides unexpected ones behind INTERNAL."""

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):  # type: ignore[no-untyped-def]
                async with _mapped_errors(context, method):
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request, context):  # type: ignore[no-untyped-def]
                async with _mapped_errors(context, method):
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@dataclass
class GrpcService:
    """A started server: its port, health servicer and what to close on stop."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    names: Sequence[str]
    closers: list[Closer] = field(default_factory=list)
    # The plaintext health-only server for kubelet probes (start_server's health_port).
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    async def stop(self, grace: float = 5.0, drain: float = 0.0) -> None:
        """NOT_SERVING first (so load balancers stop sending), drain, stop, close clients."""
        # For good: a readiness watcher must not set SERVING again during the drain.
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)  # the drain window itself, not a synchronisation
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing")


async def start_server(
    *,
    names: Sequence[str],
    register: Register,
    access: Policy,
    host: str = "127.0.0.1",
    port: int = 0,
    closers: Sequence[Closer] = (),
    max_connection_age_s: int = 300,
    credentials: grpc.ServerCredentials | None = None,
    health_port: int | None = None,
) -> GrpcService:
    """Builds, binds and starts a server; port 0 picks a free port (tests).

    With `credentials` (pagewire.kit.tls: mutual TLS, client certificate required)
    the port speaks TLS only; without them it is plaintext. `access` is required:
    every service `names` lists needs its table in it, or the server does not start
    (tests' in-process fakes pass `Policy.open(names)`). With `health_port` a
    second, plaintext server answers grpc.health.v1 alone (the same statuses) for
    the kubelet's native gRPC probes, which cannot present a client certificate.
    """
    unguarded = set(names) - access.services
    if unguarded:
        raise ValueError(f"no access table for {sorted(unguarded)}")
    server = grpc.aio.server(
        # Tracing outermost: its span sees the status the error mapping aborts with;
        # authorization innermost, so its refusals are mapped like any domain error.
        interceptors=[
            *telemetry.server_interceptors(),
            ErrorMappingInterceptor(),
            AuthorizationInterceptor(access),
        ],
        options=[
            ("grpc.max_connection_age_ms", max_connection_age_s * 1000),
            ("grpc.max_connection_age_grace_ms", 10_000),
            ("grpc.so_reuseport", 0),
            # One Ingest carries a whole webhook body (up to the gateway's limit, 1 MiB by
            # default) plus its normalized form; gRPC's default 4 MiB would cap raising it.
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    health_server, health_bound = None, None
    if health_port is not None:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_bound = health_server.add_insecure_port(f"{host}:{health_port}")
        if health_bound == 0:
            raise OSError(f"cannot bind gRPC health port {host}:{health_port}")
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcService(
        server,
        health_servicer,
        bound,
        list(names),
        list(closers),
        health_server=health_server,
        health_port=health_bound,
    )


async def serve_until_signal(service: GrpcService, *, drain: float, grace: float) -> None:
    """Runs until SIGTERM or SIGINT, then stops gracefully (Kubernetes sends SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", extra={"port": service.port, "services": list(service.names)})
    await stop.wait()
    log.info("stopping", extra={"drain_s": drain, "grace_s": grace})
    await service.stop(grace=grace, drain=drain)
    log.info("stopped")
