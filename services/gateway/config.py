"""The gateway's frozen settings, read once from the environment at start."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pagewire.kit.settings import (
    Secret,
    SettingsError,
    env_float,
    env_int,
    env_secret,
    env_str,
    grpc_target,
)

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Meta gives up on a delivery after 5 s; answering after that only earns a retry.
META_ACK_DEADLINE_S = 5.0
# Longer than uvicorn's 5 s keep-alive, so an idle connection Meta reuses is closed by that
# timer as usual; this one only ends connections that trickle their request headers.
DEFAULT_HEADER_TIMEOUT_S = 10.0
# Meta writes a body at once and it arrives in milliseconds; one still incomplete when Meta
# has stopped waiting can no longer be acknowledged in time, so reading on only serves a
# client that trickles.
DEFAULT_BODY_TIMEOUT_S = META_ACK_DEADLINE_S
# Worst case, each POST in flight holds a whole body: 128 x 1 MiB stays inside the pod's
# 256 MiB memory limit beside the process itself (about 60-80 MB), and at tens of
# milliseconds per POST it is still thousands of POSTs a second per process.
DEFAULT_MAX_CONCURRENCY = 128
# Meta batches at most a few hundred items in one POST.
DEFAULT_MAX_ITEMS = 1000


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs; secrets are wrapped so `repr` never shows them."""

    app_secret: Secret
    instagram_app_secret: Secret
    verify_token: Secret
    router_addr: str
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    ingest_timeout_s: float = 4.0
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_items: int = DEFAULT_MAX_ITEMS
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        """Reads `PAGEWIRE_*`; a missing or invalid value raises SettingsError naming it."""
        # The app secret is read first: without it no webhook can be trusted, and the
        # error an operator sees on a bare start should name it.
        app_secret = _required_secret(environ, "APP_SECRET")
        instagram = env_secret(environ, "INSTAGRAM_APP_SECRET", required=False) or app_secret
        verify_token = _required_secret(environ, "VERIFY_TOKEN")
        timeout = env_float(environ, "GATEWAY_INGEST_TIMEOUT_S", 4.0)
        if not 0 < timeout < META_ACK_DEADLINE_S:
            raise SettingsError(
                "PAGEWIRE_GATEWAY_INGEST_TIMEOUT_S must be above 0 and below"
                f" {META_ACK_DEADLINE_S:g} (Meta stops waiting after {META_ACK_DEADLINE_S:g} s)"
            )
        body_timeout = _seconds(
            environ,
            "GATEWAY_BODY_TIMEOUT_S",
            DEFAULT_BODY_TIMEOUT_S,
            at_most=META_ACK_DEADLINE_S,
            why=f"Meta stops waiting after {META_ACK_DEADLINE_S:g} s",
        )
        level = env_str(environ, "LOG_LEVEL", "INFO").upper()
        if level not in _LOG_LEVELS:
            raise SettingsError(f"PAGEWIRE_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")
        return cls(
            app_secret=app_secret,
            instagram_app_secret=instagram,
            verify_token=verify_token,
            router_addr=grpc_target(environ, "router", 50051),
            host=env_str(environ, "GATEWAY_HOST", "127.0.0.1"),
            port=env_int(environ, "GATEWAY_PORT", 8080, minimum=1, maximum=65535),
            max_body_bytes=env_int(environ, "GATEWAY_MAX_BODY_BYTES", 1_048_576, minimum=1),
            ingest_timeout_s=timeout,
            header_timeout_s=_seconds(
                environ, "GATEWAY_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S
            ),
            body_timeout_s=body_timeout,
            max_concurrency=env_int(
                environ, "GATEWAY_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY, minimum=1
            ),
            max_items=env_int(environ, "GATEWAY_MAX_ITEMS", DEFAULT_MAX_ITEMS, minimum=1),
            log_level=level,
        )


def _seconds(
    environ: Mapping[str, str],
    name: str,
    default: float,
    *,
    at_most: float | None = None,
    why: str = "",
) -> float:
    """A timeout: a finite number of seconds above 0 (and at most `at_most`)."""
    # No lower bound in env_float: the message below names the real rule.
    value = env_float(environ, name, default, minimum=-math.inf)
    if not (math.isfinite(value) and value > 0) or (at_most is not None and value > at_most):
        bound = f" and at most {at_most:g}" if at_most is not None else ""
        reason = f" ({why})" if why else ""
        raise SettingsError(f"PAGEWIRE_{name} must be a number of seconds above 0{bound}{reason}")
    return value


def _required_secret(environ: Mapping[str, str], name: str) -> Secret:
    secret = env_secret(environ, name, required=True)
    if secret is None:  # env_secret raises first; this keeps the type checker honest
        raise SettingsError(f"PAGEWIRE_{name} is required")
    return secret
