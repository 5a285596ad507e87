"""The environment of the whole suite on this machine's free ports, for tests and the bench.

`make run` uses fixed ports and var/; the test stack and `make bench` start many
suites side by side, so each gets free ports, its own var/ (key ring file, dev
PKI for mutual TLS) and the settings every service reads.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pagewire.fakegraph import FAKE_APP_ID
from pagewire.kit.tls import DevPki, generate_pki

GRPC_SERVICES = ("router", "tokens", "subscriptions")
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalSuite:
    """The shared environment, the chosen ports, and the dev PKI (None: plaintext gRPC)."""

    env: dict[str, str]
    ports: dict[str, int]
    pki: DevPki | None


def local_suite(
    workdir: Path,
    *,
    database_url: str,
    redis_url: str | None,
    redis_prefix: str,
    graph_url: str,
    keyring: str,
    app_secret: str,
    verify_token: str,
    log_level: str = "INFO",
    tls: bool = True,
) -> LocalSuite:
    """Settings for gateway, router, tokens and subscriptions on free ports under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in (*GRPC_SERVICES, "gateway")}
    var = workdir / "var"
    var.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A file, as Kubernetes mounts the Secret, so `pagewire tokens rotate` can add a key.
    keyring_file = var / "keyring.json"
    keyring_file.write_text(keyring)
    keyring_file.chmod(0o600)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "PAGEWIRE_DATABASE_URL": database_url,
        "PAGEWIRE_REDIS_PREFIX": redis_prefix,
        "PAGEWIRE_APP_SECRET": app_secret,
        "PAGEWIRE_VERIFY_TOKEN": verify_token,
        "PAGEWIRE_KEYRING_FILE": str(keyring_file),
        "PAGEWIRE_GRAPH_URL": graph_url,
        "PAGEWIRE_INSTAGRAM_GRAPH_URL": graph_url,
        # The app id fake-graph lists in GET subscribed_apps.
        "PAGEWIRE_APP_ID": FAKE_APP_ID,
        "PAGEWIRE_VAR_DIR": str(var),
        "PAGEWIRE_SHUTDOWN_DRAIN_S": "0",
        "PAGEWIRE_LOG_LEVEL": log_level,
        "PAGEWIRE_GATEWAY_PORT": str(ports["gateway"]),
    }
    if redis_url:
        env["PAGEWIRE_REDIS_URL"] = redis_url
    for name in GRPC_SERVICES:
        env[f"PAGEWIRE_{name.upper()}_PORT"] = str(ports[name])
        env[f"PAGEWIRE_{name.upper()}_ADDR"] = f"127.0.0.1:{ports[name]}"
    pki = None
    if tls:
        # Where `make run` keeps it (var/tls/), so the CLI finds its own certificate too.
        pki = generate_pki(var / "tls")
    else:
        env["PAGEWIRE_INSECURE_GRPC"] = "1"
    return LocalSuite(env, ports, pki)
