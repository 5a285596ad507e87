"""gRPC stubs generated from protos/ by `make install` (never committed)."""

from pagewire.proto.pagewire.events.v1 import events_pb2
from pagewire.proto.pagewire.router.v1 import router_pb2, router_pb2_grpc
from pagewire.proto.pagewire.subscriptions.v1 import subscriptions_pb2, subscriptions_pb2_grpc
from pagewire.proto.pagewire.tokens.v1 import tokens_pb2, tokens_pb2_grpc

__all__ = [
    "events_pb2",
    "router_pb2",
    "router_pb2_grpc",
    "subscriptions_pb2",
    "subscriptions_pb2_grpc",
    "tokens_pb2",
    "tokens_pb2_grpc",
]
