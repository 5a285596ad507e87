"""The gateway's frozen settings, read once from the environment at start."""

from __future__ import annotations

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
            log_level=level,
        )


def _required_secret(environ: Mapping[str, str], name: str) -> Secret:
    secret = env_secret(environ, name, required=True)
    if secret is None:  # env_secret raises first; this keeps the type checker honest
        raise SettingsError(f"PAGEWIRE_{name} is required")
    return secret
