"""Helpers every service's frozen settings use to read the environment once, at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

PREFIX = "PAGEWIRE_"

# Values people paste from examples; a service refuses to start with one of them.
_PLACEHOLDERS = {
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "placeholder",
    "example",
    "todo",
    "xxx",
    "your-app-secret",
    "your_app_secret",
    "app_secret",
    "verify_token",
}


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable."""


class Secret:
    """A secret string whose repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret itself; call only where it is used."""
        return self._value

    def encode(self) -> bytes:
        return self._value.encode()

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def hidden(**kwargs: Any) -> Any:
    """A settings field left out of the dataclass's repr: a URL that may carry a password.

    `hidden()` or `hidden(default=None)` in place of `dataclasses.field(...)`."""
    return field(repr=False, **kwargs)


# Query parameters that carry a credential (libpq accepts `?password=`).
_SECRET_QUERY_KEYS = {"password", "pass", "passwd", "secret", "token", "sslpassword"}


def redacted_url(url: str) -> str:
    """`url` safe to log: its password (and any password-like query value) as `***`.

    `postgresql+psycopg://app:s3cret@db:5432/pagewire` → `…://app:***@db:5432/pagewire`;
    `redis://:s3cret@redis:6379/0` → `redis://:***@redis:6379/0`. A URL that cannot be
    parsed is reduced to its scheme.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, host = netloc.rsplit("@", 1)
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
                query = urlencode(
                    [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
                    safe="*",
                )
        if netloc == parts.netloc and query == parts.query:
            return url
        # Assembled by hand: urlunsplit would drop the `//` of a URL with an empty host.
        rest = parts.path + (f"?{query}" if query else "")
        return f"{parts.scheme}://{netloc}{rest}" + (f"#{parts.fragment}" if parts.fragment else "")
    except ValueError:
        return url.split(":", 1)[0] + "://…" if ":" in url else "…"


def env_str(environ: Mapping[str, str], name: str, default: str | None = None) -> str:
    """A plain setting; `name` is without the prefix. Missing and no default → error."""
    value = environ.get(PREFIX + name)
    if value is None or value == "":
        if default is None:
            raise SettingsError(f"{PREFIX}{name} is required")
        return default
    return value


def env_int(
    environ: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer setting with bounds."""
    raw = environ.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{PREFIX}{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{PREFIX}{name} must be at most {maximum}")
    return value


def env_float(
    environ: Mapping[str, str], name: str, default: float, *, minimum: float = 0
) -> float:
    """A float setting (seconds, ratios)."""
    raw = environ.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{PREFIX}{name} must be at least {minimum}")
    return value


def env_bool(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean setting: 1/true/yes/on or 0/false/no/off."""
    raw = environ.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{PREFIX}{name} must be true or false, got {raw!r}")


def env_secret(environ: Mapping[str, str], name: str, *, required: bool = True) -> Secret | None:
    """A secret from `PAGEWIRE_<name>` or from the file named by `PAGEWIRE_<name>_FILE`.

    Files are how Kubernetes mounts Secrets; one trailing newline is dropped.
    Placeholder values are refused so that an example config never reaches production.
    """
    var, file_var = PREFIX + name, PREFIX + name + "_FILE"
    value, path = environ.get(var) or None, environ.get(file_var) or None
    if value and path:
        raise SettingsError(f"set {var} or {file_var}, not both")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
        except OSError as exc:
            raise SettingsError(f"{file_var}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise SettingsError(f"{file_var}: {path} is empty")
    if not value:
        if required:
            raise SettingsError(f"{var} (or {file_var}) is required")
        return None
    if value.strip().lower() in _PLACEHOLDERS or value.startswith("<"):
        raise SettingsError(f"{var} looks like a placeholder; set the real value")
    return Secret(value)


def var_dir(environ: Mapping[str, str]) -> Path:
    """Where embedded defaults keep their state (SQLite files, dev key ring, dev secrets)."""
    return Path(env_str(environ, "VAR_DIR", "var")).resolve()


def database_url(environ: Mapping[str, str], service: str) -> str:
    """The service's own database URL, else the shared one, else SQLite under var/."""
    own = environ.get(f"{PREFIX}{service.upper()}_DATABASE_URL")
    shared = environ.get(PREFIX + "DATABASE_URL")
    url = own or shared
    if not url:
        return f"sqlite+aiosqlite:///{var_dir(environ) / (service + '.db')}"
    return normalize_database_url(url)


def normalize_database_url(url: str) -> str:
    """Accepts the usual spellings and returns an async SQLAlchemy URL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith(("postgresql+psycopg://", "sqlite+aiosqlite:///")):
        return url
    raise SettingsError(
        "database URL must start with postgresql:// or sqlite:///"
        f" (got a URL starting {url.split(':', 1)[0]!r})"
    )


def grpc_target(environ: Mapping[str, str], service: str, default_port: int) -> str:
    """Where clients reach a gRPC service: `PAGEWIRE_<SERVICE>_ADDR` (host:port or dns:///…)."""
    return env_str(environ, f"{service.upper()}_ADDR", f"127.0.0.1:{default_port}")


def current_environ() -> Mapping[str, str]:
    """The process environment; only composition roots call this."""
    return os.environ
