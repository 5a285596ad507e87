"""`make run`: the whole suite on one machine with embedded defaults.

SQLite under var/, an in-process lock, a key ring and dev secrets generated
into var/ (mode 0600) and printed once, and mutual TLS between the services: a
local CA and one certificate per service in var/tls/, each child started with
its own. Setting PAGEWIRE_DATABASE_URL and PAGEWIRE_REDIS_URL switches to
PostgreSQL and Redis. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

from pagewire.kit import migrate
from pagewire.kit.settings import SettingsError, database_url, env_bool, var_dir
from pagewire.kit.tls import DevPki, GrpcSecurity, generate_pki
from pagewire.probe import grpc_serving, http_ok
from services.tokens.vault import generate_keyring

SERVICES = ("tokens", "subscriptions", "router", "gateway")
START_TIMEOUT_S = 30


def _private_file(path: Path, make: Callable[[], str]) -> tuple[Path, bool]:
    """Creates `path` with mode 0600 unless it exists; returns it and whether it was new."""
    if path.exists():
        return path, False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(make())
    return path, True


def prepare(environ: MutableMapping[str, str]) -> list[str]:
    """Fills in dev secrets and the key ring from var/, migrates; returns lines to print."""
    var = var_dir(environ)
    var.mkdir(mode=0o700, parents=True, exist_ok=True)
    notes: list[str] = []
    dev_values = {
        "APP_SECRET": ("app_secret", lambda: secrets.token_hex(16)),
        "VERIFY_TOKEN": ("verify_token", lambda: secrets.token_urlsafe(18)),
        "KEYRING": ("keyring.json", generate_keyring),
    }
    for name, (filename, make) in dev_values.items():
        if environ.get(f"PAGEWIRE_{name}") or environ.get(f"PAGEWIRE_{name}_FILE"):
            continue
        path, created = _private_file(var / filename, make)
        environ[f"PAGEWIRE_{name}_FILE"] = str(path)
        if name == "KEYRING":
            notes.append(f"key ring: {path} ({'generated' if created else 'existing'}, mode 0600)")
        else:
            # Printed once at start so a developer can paste it into Meta's dashboard.
            value = path.read_text(encoding="utf-8").strip()
            notes.append(f"dev {name.lower().replace('_', ' ')}: {value}  (from {path})")
    for service in migrate.SERVICES_WITH_SCHEMA:
        url = database_url(environ, service)
        migrate.upgrade(service, url)
        where = "SQLite " + url.split("///", 1)[1] if url.startswith("sqlite") else "PostgreSQL"
        notes.append(f"{service}: schema migrated ({where})")
    if not environ.get("PAGEWIRE_REDIS_URL"):
        notes.append("no PAGEWIRE_REDIS_URL: in-process lock, correct for ONE router replica only")
    return notes


def prepare_tls(environ: MutableMapping[str, str]) -> tuple[DevPki | None, str]:
    """mTLS for every child (a CA and a certificate per service in var/tls/), unless opted out."""
    if env_bool(environ, "INSECURE_GRPC", False):
        return None, "PAGEWIRE_INSECURE_GRPC=1: gRPC WITHOUT TLS between the services (debugging)"
    if any(environ.get(f"PAGEWIRE_TLS_{name}") for name in ("CA_FILE", "CERT_FILE", "KEY_FILE")):
        return None, "mutual TLS with the certificate named by PAGEWIRE_TLS_* (for every service)"
    pki = generate_pki(var_dir(environ) / "tls")
    return pki, f"mutual TLS: local CA and a certificate per service in {pki.directory}"


def _healthy(service: str, environ: MutableMapping[str, str], probe: GrpcSecurity) -> bool:
    if service == "gateway":
        port = environ.get("PAGEWIRE_GATEWAY_PORT", "8080")
        return http_ok(f"http://127.0.0.1:{port}/healthz")
    defaults = {"router": 50051, "tokens": 50052, "subscriptions": 50053}
    port = environ.get(f"PAGEWIRE_{service.upper()}_PORT", str(defaults[service]))
    return grpc_serving(
        f"127.0.0.1:{port}", credentials=probe.channel_credentials(), server_name=service
    )


def main() -> int:
    environ = dict(os.environ)
    try:
        notes = prepare(environ)
        pki, tls_note = prepare_tls(environ)
        # The supervisor probes health as the CLI identity, like an operator would.
        probe = pki.security("cli") if pki else GrpcSecurity.from_env(environ, "cli")
    except SettingsError as exc:
        print(f"make run: configuration error: {exc}", file=sys.stderr)
        return 2
    for line in [*notes, tls_note]:
        print(f"pagewire: {line}", flush=True)

    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for service in SERVICES:
        # Each child runs with its own certificate: its identity is what the others check.
        child_env = {**environ, **pki.env(service)} if pki else environ
        children[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], env=child_env, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = set(SERVICES)
    exit_code = 0
    while not stopping:
        for service, child in children.items():
            if child.poll() is not None:
                print(f"pagewire: {service} exited with {child.returncode}", file=sys.stderr)
                stopping, exit_code = True, 1
        for service in sorted(pending):
            if _healthy(service, environ, probe):
                pending.discard(service)
                if not pending:
                    port = environ.get("PAGEWIRE_GATEWAY_PORT", "8080")
                    print(
                        f"pagewire: all services up; webhooks at http://127.0.0.1:{port}/webhooks/"
                        "facebook and /webhooks/instagram. Ctrl-C stops everything.",
                        flush=True,
                    )
        if pending and time.monotonic() > deadline:
            print(f"pagewire: not healthy after {START_TIMEOUT_S}s: {sorted(pending)}", flush=True)
            stopping, exit_code = True, 1
        # Supervisor poll; a signal handler sets `stopping`, the loop notices within this period.
        time.sleep(0.2 if pending else 0.5)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for service, child in children.items():
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            print(f"pagewire: {service} did not stop in time; killing it", file=sys.stderr)
            child.kill()
    print("pagewire: stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
