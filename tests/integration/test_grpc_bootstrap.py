"""The shared gRPC bootstrap: error mapping, health, reflection, graceful stop."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pagewire.kit.authz import Policy
from pagewire.kit.errors import Aborted, InvalidArgument
from pagewire.kit.grpcserver import start_server
from pagewire.proto import router_pb2, router_pb2_grpc

NAME = "pagewire.router.v1.RouterService"


class Failing(router_pb2_grpc.RouterServiceServicer):
    async def Ingest(self, request, context):  # type: ignore[no-untyped-def]
        raise InvalidArgument("events[0].page_id", "is required")

    async def RouteParked(self, request, context):  # type: ignore[no-untyped-def]
        raise Aborted("conversation is busy: lock wait exceeded")

    async def ListMessages(self, request, context):  # type: ignore[no-untyped-def]
        raise ValueError("EAAG-secret-token-in-a-bug")


@pytest.fixture
async def served():  # type: ignore[no-untyped-def]
    service = await start_server(
        names=[NAME],
        register=lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(Failing(), s),
        access=Policy.open([NAME]),
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    yield service, channel
    await channel.close()
    await service.stop(grace=0)


async def test_domain_errors_map_to_status_codes(served) -> None:  # type: ignore[no-untyped-def]
    _, channel = served
    stub = router_pb2_grpc.RouterServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.Ingest(router_pb2.IngestRequest())
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.details() == "events[0].page_id: is required"
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await stub.RouteParked(router_pb2.RouteParkedRequest())
    assert busy.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as bug:
        await stub.ListMessages(router_pb2.ListMessagesRequest())
    assert bug.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in bug.value.details()


async def test_health_reflection_and_stop(served) -> None:  # type: ignore[no-untyped-def]
    service, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {NAME, "grpc.health.v1.Health"} <= names
    await service.stop(grace=0)
    with pytest.raises(grpc.aio.AioRpcError):
        await health.Check(health_pb2.HealthCheckRequest(service=NAME), timeout=1)
