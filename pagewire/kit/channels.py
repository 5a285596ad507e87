"""gRPC client channels: round-robin over every address a name resolves to."""

from __future__ import annotations

import json

import grpc

from pagewire.kit.telemetry import client_interceptors

# With `dns:///` targets on a headless Service, round_robin spreads calls over
# every replica; the default pick_first would send everything to one pod.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """An async channel to `target` (host:port or dns:///name:port).

    With `credentials` (mutual TLS, see pagewire.kit.tls) the server's certificate
    must carry `server_name` — the service's name — whatever address is dialled;
    without them the channel is plaintext. While tracing is on (pagewire.kit.telemetry)
    every call carries the caller's `traceparent` in its metadata.
    """
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", 32 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # gRPC's default backoff grows to 120 s; a restarted replica must be used again
        # within seconds, or the gateway answers 503 long after the router is back.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    interceptors = client_interceptors() or None
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
