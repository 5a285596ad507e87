"""Tokens service settings, read once from the environment at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pagewire.kit.settings import (
    PREFIX,
    SettingsError,
    database_url,
    env_float,
    env_int,
    env_secret,
    env_str,
)
from services.tokens.vault import KeyRing, KeyRingError


@dataclass(frozen=True)
class TokensSettings:
    """Where the vault listens, where it stores, and the key ring it encrypts with."""

    database_url: str = field(repr=False)  # may carry a password
    keyring: KeyRing
    host: str = "127.0.0.1"
    port: int = 50052
    drain_s: float = 0.5
    grace_s: float = 5.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TokensSettings:
        return cls(
            database_url=database_url(environ, "tokens"),
            keyring=load_keyring(environ),
            host=env_str(environ, "GRPC_HOST", "127.0.0.1"),
            port=env_int(environ, "TOKENS_PORT", 50052, minimum=0, maximum=65535),
            drain_s=env_float(environ, "SHUTDOWN_DRAIN_S", 0.5),
            grace_s=env_float(environ, "SHUTDOWN_GRACE_S", 5.0),
            log_level=env_str(environ, "LOG_LEVEL", "INFO").upper(),
        )


def load_keyring(environ: Mapping[str, str]) -> KeyRing:
    """The key ring from `PAGEWIRE_KEYRING` (or `_FILE`), validated; errors never quote keys."""
    secret = env_secret(environ, "KEYRING")
    assert secret is not None  # required=True raises instead of returning None
    try:
        return KeyRing.from_json(secret.get())
    except KeyRingError as exc:
        raise SettingsError(f"{PREFIX}KEYRING {exc}") from None
