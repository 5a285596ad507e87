"""Graph client settings, read from the environment by whichever service calls Graph."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pagewire.kit.settings import (
    PREFIX,
    Secret,
    SettingsError,
    env_bool,
    env_float,
    env_int,
    env_secret,
    env_str,
)

_VERSION = re.compile(r"v[0-9]{1,3}\.[0-9]{1,2}")
_APP_ID = re.compile(r"[0-9]{1,32}")


def base_url(environ: Mapping[str, str], name: str, default: str) -> str:
    """An http(s) base URL without query or fragment, trailing slash removed."""
    value = env_str(environ, name, default).rstrip("/")
    if not value.startswith(("https://", "http://")) or "?" in value or "#" in value:
        raise SettingsError(f"{PREFIX}{name} must be an http(s) base URL without a query")
    return value


def _app_id(environ: Mapping[str, str], name: str, default: str) -> str:
    value = environ.get(PREFIX + name) or default
    if value and not _APP_ID.fullmatch(value):
        raise SettingsError(f"{PREFIX}{name} must be the app's numeric id")
    return value


@dataclass(frozen=True)
class GraphSettings:
    """Hosts, version, timeouts, retries and the optional appsecret_proof of Graph calls."""

    url: str = "https://graph.facebook.com"
    instagram_url: str = "https://graph.instagram.com"
    version: str = "v25.0"
    timeout_s: float = 10.0
    max_attempts: int = 3
    retry_base_s: float = 0.5
    # A wait longer than this is not spent inside one call: the call fails with
    # retry_after_s and the object stays on hold for the next caller.
    retry_max_wait_s: float = 20.0
    app_id: str = ""
    instagram_app_id: str = ""
    app_secret: Secret | None = None  # set only when appsecret_proof is on
    instagram_app_secret: Secret | None = None

    @property
    def appsecret_proof(self) -> bool:
        return self.app_secret is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GraphSettings:
        version = env_str(environ, "GRAPH_VERSION", "v25.0")
        if not _VERSION.fullmatch(version):
            raise SettingsError(f"{PREFIX}GRAPH_VERSION must look like v25.0, got {version!r}")
        app_secret = instagram_secret = None
        if env_bool(environ, "GRAPH_APPSECRET_PROOF", False):
            app_secret = env_secret(environ, "APP_SECRET")
            instagram_secret = env_secret(environ, "INSTAGRAM_APP_SECRET", required=False)
        app_id = _app_id(environ, "APP_ID", "")
        return cls(
            url=base_url(environ, "GRAPH_URL", "https://graph.facebook.com"),
            instagram_url=base_url(environ, "INSTAGRAM_GRAPH_URL", "https://graph.instagram.com"),
            version=version,
            timeout_s=env_float(environ, "GRAPH_TIMEOUT_S", 10.0, minimum=0.1),
            max_attempts=env_int(environ, "GRAPH_MAX_ATTEMPTS", 3, minimum=1, maximum=10),
            retry_base_s=env_float(environ, "GRAPH_RETRY_BASE_S", 0.5, minimum=0.01),
            retry_max_wait_s=env_float(environ, "GRAPH_RETRY_MAX_WAIT_S", 20.0),
            app_id=app_id,
            instagram_app_id=_app_id(environ, "INSTAGRAM_APP_ID", app_id),
            app_secret=app_secret,
            instagram_app_secret=instagram_secret or app_secret,
        )
