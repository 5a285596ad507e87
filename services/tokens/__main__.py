"""Composition root of the tokens service: `python -m services.tokens`."""

from __future__ import annotations

import logging

from sqlalchemy.exc import ProgrammingError

from pagewire.kit import telemetry
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.errors import Unavailable
from pagewire.kit.grpcserver import serve_until_signal, start_server
from pagewire.kit.logs import setup_logging
from pagewire.kit.metrics import metrics_port, refreshing, serve_metrics
from pagewire.kit.runner import run
from pagewire.kit.settings import PREFIX, SettingsError, current_environ
from pagewire.kit.tls import GrpcSecurity
from services.tokens.access import Access
from services.tokens.config import TokensSettings
from services.tokens.keyring import KeyRingFile
from services.tokens.metrics import refresh_tokens
from services.tokens.server import SERVICE_NAME, TokensServiceServicer, register
from services.tokens.vault import Cipher, TokenVault

log = logging.getLogger("pagewire.tokens")
# How often the pagewire_page_tokens gauge is read from the database.
METRICS_REFRESH_S = 30.0


async def check_key_ring(vault: TokenVault, settings: TokensSettings) -> None:
    """Refuses to start when the primary in force is not in the key ring; warns on the rest."""
    try:
        report = await vault.startup_report()
    except Unavailable as exc:
        # Not fatal: the database may come up after us; every RPC reports it anyway.
        log.warning("could not check the key ring against stored tokens", extra={"error": str(exc)})
        return
    except ProgrammingError:
        raise SettingsError(
            "the tokens schema is older than this service: run `pagewire db upgrade"
            " --service tokens` (the migration Job) first"
        ) from None
    if report.primary not in settings.keyring.keys:
        raise SettingsError(
            f"{PREFIX}KEYRING: the vault's primary key {report.primary!r} (set by the last"
            " rotation) is not in the key ring; add it back, or no token can be stored"
        )
    if report.recorded_primary and report.recorded_primary != settings.keyring.primary:
        log.info(
            "the key ring file names another primary; the vault's primary (set by rotation) wins",
            extra={"file_primary": settings.keyring.primary, "primary": report.primary},
        )
    if report.unknown_key_ids:
        log.error(
            "stored tokens use keys missing from the key ring; they cannot be decrypted",
            extra={"key_ids": report.unknown_key_ids},
        )
    if report.retired_in_ring:
        log.warning(
            "the key ring still holds retired keys; delete them from it",
            extra={"key_ids": report.retired_in_ring},
        )


async def main() -> None:
    environ = current_environ()
    settings = TokensSettings.from_env(environ)
    security = GrpcSecurity.from_env(environ, "tokens")
    security.require_safe_bind(settings.host)
    scrape_port = metrics_port(environ)
    setup_logging("tokens", settings.log_level)
    tracing = telemetry.setup("tokens", environ)
    security.announce(log)
    engine = create_engine(settings.database_url, "tokens")
    file = KeyRingFile(settings.keyring_file) if settings.keyring_file else None
    if file is not None and file.world_readable():
        log.warning("the key ring file is readable by every user", extra={"path": str(file.path)})
    session_factory = sessions(engine)
    vault = TokenVault(session_factory, Cipher(settings.keyring, file))
    log.info(
        "key ring loaded",
        extra={
            "primary_key_id": settings.keyring.primary,
            "key_ids": sorted(settings.keyring.keys),
            "decrypt_allowed": list(settings.decrypt_allowed),
        },
    )
    try:
        await check_key_ring(vault, settings)
    except SettingsError:
        await engine.dispose()
        raise
    access = Access.of(
        settings.decrypt_allowed,
        settings.write_allowed,
        settings.admin_allowed,
        allow_unauthenticated=security.insecure,
    )
    # Closed in reverse: the spans of the shutdown itself are flushed last.
    closers = [tracing.shutdown, engine.dispose]
    if scrape_port:
        closers.append(await serve_metrics(settings.host, scrape_port))
        closers.append(refreshing(lambda: refresh_tokens(session_factory), METRICS_REFRESH_S))
    servicer = TokensServiceServicer(vault, access)
    service = await start_server(
        names=[SERVICE_NAME],
        register=register(servicer),
        access=servicer.policy(),
        host=settings.host,
        port=settings.port,
        closers=closers,
        credentials=security.server_credentials(),
        health_port=security.health_port,
    )
    await serve_until_signal(service, drain=settings.drain_s, grace=settings.grace_s)


if __name__ == "__main__":
    run(main, "tokens")
