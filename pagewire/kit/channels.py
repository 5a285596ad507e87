"""gRPC client channels: round-robin over every address a name resolves to."""

from __future__ import annotations

import json

import grpc

# With `dns:///` targets on a headless Service, round_robin spreads calls over
# every replica; the default pick_first would send everything to one pod.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure async channel to `target` (host:port or dns:///name:port)."""
    return grpc.aio.insecure_channel(
        target,
        options=[
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
        ],
    )
