"""Composition root of the tokens service: `python -m services.tokens`."""

from __future__ import annotations

import logging

from pagewire.kit.db import create_engine, sessions
from pagewire.kit.errors import Unavailable
from pagewire.kit.grpcserver import serve_until_signal, start_server
from pagewire.kit.logs import setup_logging
from pagewire.kit.runner import run
from pagewire.kit.settings import current_environ
from services.tokens.config import TokensSettings
from services.tokens.server import SERVICE_NAME, TokensServiceServicer, register
from services.tokens.vault import Cipher, TokenVault

log = logging.getLogger("pagewire.tokens")


async def main() -> None:
    settings = TokensSettings.from_env(current_environ())
    setup_logging("tokens", settings.log_level)
    engine = create_engine(settings.database_url, "tokens")
    vault = TokenVault(sessions(engine), Cipher(settings.keyring))
    log.info(
        "key ring loaded",
        extra={
            "primary_key_id": settings.keyring.primary,
            "key_ids": sorted(settings.keyring.keys),
        },
    )
    try:
        unknown = await vault.unknown_key_ids()
    except Unavailable as exc:
        # Not fatal: the database may come up after us; every RPC reports it anyway.
        log.warning("could not check stored key ids", extra={"error": str(exc)})
    else:
        if unknown:
            log.error(
                "stored tokens use keys missing from the key ring; they cannot be decrypted",
                extra={"key_ids": unknown},
            )
    service = await start_server(
        names=[SERVICE_NAME],
        register=register(TokensServiceServicer(vault)),
        host=settings.host,
        port=settings.port,
        closers=[engine.dispose],
    )
    await serve_until_signal(service, drain=settings.drain_s, grace=settings.grace_s)


if __name__ == "__main__":
    run(main, "tokens")
