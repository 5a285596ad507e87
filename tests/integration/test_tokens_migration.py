"""Migration 0002: tokens sealed before key ids were bound keep opening, then rotate to v2."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import psycopg
import pytest
from alembic import command
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pagewire.kit import migrate
from pagewire.kit.db import create_engine, sessions
from services.tokens.vault import Cipher, KeyRing, TokenVault
from tests.support.tokens import KEY_A, RING_A_PLUS_B

PAGES = {"109384756201938": "EAAGlegacyTokenOne0123456789", "117465829304716": "EAAGlegacyTwo99"}


def legacy_seal(page_id: str, token: str) -> tuple[bytes, bytes]:
    """How revision 0001's vault sealed: AAD pagewire/page-token/v1|platform|page."""
    nonce = secrets.token_bytes(12)
    ad = b"pagewire/page-token/v1|FACEBOOK|" + page_id.encode()
    return nonce, AESGCM(base64.b64decode(KEY_A)).encrypt(nonce, token.encode(), ad)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(migrate._config("tokens", url), revision)


async def check_migrated(url: str, insert_sql: str, connect) -> None:  # type: ignore[no-untyped-def]
    downgrade(url, "0001")
    with connect() as conn:
        for page_id, token in PAGES.items():
            nonce, ciphertext = legacy_seal(page_id, token)
            conn.execute(insert_sql, (page_id, nonce, ciphertext))
        conn.commit()
    migrate.upgrade("tokens", url, "0002")
    assert migrate.current("tokens", url) == "0002"
    migrate.upgrade("tokens", url)  # and on to the head the vault's code expects

    engine = create_engine(url, "tokens")
    try:
        vault = TokenVault(sessions(engine), Cipher(KeyRing.from_json(RING_A_PLUS_B)))
        for page_id, token in PAGES.items():
            assert (await vault.decrypt("FACEBOOK", page_id)).token.get() == token
            assert (await vault.status("FACEBOOK", page_id)).format_version == 1
        keys = {k.key_id: (k.tokens, k.legacy_tokens) for k in (await vault.keys()).keys}
        assert keys["key-a"] == (2, 2)
        rotation = await vault.rotate("key-b")
        assert (rotation.rewrapped, rotation.failed) == (2, 0)
        for page_id, token in PAGES.items():
            assert (await vault.decrypt("FACEBOOK", page_id)).token.get() == token
            info = await vault.status("FACEBOOK", page_id)
            assert (info.key_id, info.format_version) == ("key-b", 2)
    finally:
        await engine.dispose()
    # Format-2 tokens cannot be held by revision 0001: the downgrade refuses to lose them.
    with pytest.raises(RuntimeError, match="format 2"):
        downgrade(url, "0001")


INSERT = (
    "INSERT INTO page_tokens (platform, page_id, key_id, nonce, ciphertext, status,"
    " created_at_ms, updated_at_ms) VALUES ('FACEBOOK', {p}, 'key-a', {p}, {p}, 'ACTIVE', 1, 2)"
)


async def test_migration_on_postgresql(database_url: str) -> None:
    plain = database_url.replace("postgresql+psycopg://", "postgresql://")

    def connect():  # type: ignore[no-untyped-def]
        return psycopg.connect(plain, options="-csearch_path=tokens")

    await check_migrated(database_url, INSERT.format(p="%s"), connect)


async def test_migration_on_sqlite(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "tokens.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade("tokens", url)
    await check_migrated(url, INSERT.format(p="?"), lambda: sqlite3.connect(path))


def test_downgrade_and_upgrade_keep_legacy_tokens(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "tokens.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade("tokens", url, "0001")
    nonce, ciphertext = legacy_seal("42", "EAAGroundtrip")
    with sqlite3.connect(path) as conn:
        conn.execute(INSERT.format(p="?"), ("42", nonce, ciphertext))
    migrate.upgrade("tokens", url)
    downgrade(url, "0001")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT nonce, ciphertext FROM page_tokens").fetchone() == (
            nonce,
            ciphertext,
        )
