"""Tokens service settings, read once from the environment at start."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pagewire.kit.settings import (
    PREFIX,
    SettingsError,
    database_url,
    env_float,
    env_int,
    env_secret,
    env_str,
    hidden,
)
from services.tokens.access import DEFAULT_ADMIN, DEFAULT_DECRYPT, DEFAULT_WRITE
from services.tokens.keyring import KeyRing, KeyRingError

_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class TokensSettings:
    """Where the vault listens, where it stores, its key ring and who may call what."""

    database_url: str = hidden()  # may carry a password
    keyring: KeyRing
    keyring_file: Path | None = None
    decrypt_allowed: tuple[str, ...] = DEFAULT_DECRYPT
    write_allowed: tuple[str, ...] = DEFAULT_WRITE
    admin_allowed: tuple[str, ...] = DEFAULT_ADMIN
    host: str = "127.0.0.1"
    port: int = 50052
    drain_s: float = 0.5
    grace_s: float = 5.0
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TokensSettings:
        file = environ.get(f"{PREFIX}KEYRING_FILE") or None
        return cls(
            database_url=database_url(environ, "tokens"),
            keyring=load_keyring(environ),
            keyring_file=Path(file) if file else None,
            decrypt_allowed=identities(environ, "TOKENS_DECRYPT_ALLOWED", DEFAULT_DECRYPT),
            write_allowed=identities(environ, "TOKENS_WRITE_ALLOWED", DEFAULT_WRITE),
            admin_allowed=identities(environ, "TOKENS_ADMIN_ALLOWED", DEFAULT_ADMIN),
            host=env_str(environ, "GRPC_HOST", "127.0.0.1"),
            port=env_int(environ, "TOKENS_PORT", 50052, minimum=0, maximum=65535),
            drain_s=env_float(environ, "SHUTDOWN_DRAIN_S", 0.5),
            grace_s=env_float(environ, "SHUTDOWN_GRACE_S", 5.0),
            log_level=env_str(environ, "LOG_LEVEL", "INFO").upper(),
        )


def load_keyring(environ: Mapping[str, str]) -> KeyRing:
    """The key ring from `PAGEWIRE_KEYRING` (or `_FILE`), validated; errors never quote keys.

    Never generated here: a service that cannot find its key ring stops, naming
    the problem, rather than sealing tokens with a key nobody will have tomorrow.
    """
    secret = env_secret(environ, "KEYRING")
    assert secret is not None  # required=True raises instead of returning None
    try:
        return KeyRing.from_json(secret.get())
    except KeyRingError as exc:
        raise SettingsError(f"{PREFIX}KEYRING {exc}") from None


def identities(environ: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list of certificate identities (service names); unset or empty: the default."""
    raw = environ.get(PREFIX + name)
    if raw is None or not raw.strip():
        return default
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    for item in names:
        if not _IDENTITY.fullmatch(item):
            raise SettingsError(f"{PREFIX}{name}: {item[:64]!r} is not a certificate identity")
    return names
