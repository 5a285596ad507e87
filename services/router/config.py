"""The router's settings, read once from the environment at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pagewire.kit.settings import (
    database_url,
    env_float,
    env_int,
    env_str,
    grpc_target,
    hidden,
)


@dataclass(frozen=True)
class RouterSettings:
    """Everything the router needs; built by `from_env` in the composition root."""

    host: str
    port: int
    database_url: str = hidden()  # may carry a password
    db_pool_size: int
    redis_url: str | None = hidden()  # may carry a password
    redis_prefix: str
    # Connect and read timeout of every Redis command: shorter than the gateway's Ingest
    # deadline (PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S, 4 s), so a frozen Redis answers 503 in time.
    redis_timeout_s: float
    subscriptions_addr: str
    tokens_addr: str
    profile_refresh_s: float
    lock_ttl_ms: int
    lock_wait_ms: int
    page_cache_ttl_s: float
    rpc_timeout_s: float
    # The apply stage (services/router/apply.py).
    apply_batch: int
    apply_workers: int
    apply_lease_ms: int
    apply_idle_poll_s: float
    parked_sweep_s: float
    # How often PostgreSQL and Redis are checked for the router's readiness; a check that
    # does not answer within one interval counts as failed.
    readiness_interval_s: float
    log_level: str
    drain_s: float
    grace_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RouterSettings:
        return cls(
            host=env_str(environ, "GRPC_HOST", "127.0.0.1"),
            port=env_int(environ, "ROUTER_PORT", 50051, minimum=0, maximum=65535),
            database_url=database_url(environ, "router"),
            db_pool_size=env_int(environ, "ROUTER_DB_POOL_SIZE", 10, minimum=1, maximum=200),
            redis_url=environ.get("PAGEWIRE_REDIS_URL") or None,
            redis_prefix=env_str(environ, "REDIS_PREFIX", "pagewire"),
            redis_timeout_s=env_float(environ, "REDIS_TIMEOUT_S", 1.0, minimum=0.05),
            subscriptions_addr=grpc_target(environ, "subscriptions", 50053),
            tokens_addr=grpc_target(environ, "tokens", 50052),
            # Contact profiles are fetched at most once per this period; 0 turns them off.
            profile_refresh_s=env_float(environ, "PROFILE_REFRESH_S", 86_400.0),
            lock_ttl_ms=env_int(environ, "LOCK_TTL_MS", 10_000, minimum=100),
            lock_wait_ms=env_int(environ, "LOCK_WAIT_MS", 3_000, minimum=0),
            page_cache_ttl_s=env_float(environ, "PAGE_CACHE_TTL_S", 30.0),
            rpc_timeout_s=env_float(environ, "RPC_TIMEOUT_S", 2.0, minimum=0.05),
            # Entries per apply batch: many conversations, one statement per table.
            apply_batch=env_int(environ, "APPLY_BATCH", 500, minimum=1, maximum=5000),
            apply_workers=env_int(environ, "APPLY_WORKERS", 2, minimum=1, maximum=32),
            # A replica that dies with a claimed batch loses it to another after this.
            apply_lease_ms=env_int(environ, "APPLY_LEASE_MS", 30_000, minimum=1000),
            # How often idle workers look for entries other replicas appended.
            apply_idle_poll_s=env_float(environ, "APPLY_IDLE_POLL_S", 0.5, minimum=0.01),
            # How often parked events are checked against their pages (0: never).
            parked_sweep_s=env_float(environ, "PARKED_SWEEP_S", 10.0),
            readiness_interval_s=env_float(environ, "READINESS_INTERVAL_S", 1.0, minimum=0.05),
            log_level=env_str(environ, "LOG_LEVEL", "INFO"),
            drain_s=env_float(environ, "SHUTDOWN_DRAIN_S", 0.5),
            grace_s=env_float(environ, "SHUTDOWN_GRACE_S", 5.0),
        )
