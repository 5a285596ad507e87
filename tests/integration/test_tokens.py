"""The tokens service over real gRPC on real PostgreSQL: sealing, binding, errors, secrecy."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pagewire.kit import migrate
from pagewire.kit.channels import open_channel
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.grpcserver import GrpcService, start_server
from pagewire.kit.settings import Secret, SettingsError
from pagewire.proto import events_pb2, tokens_pb2, tokens_pb2_grpc
from services.tokens.config import TokensSettings
from services.tokens.server import SERVICE_NAME, TokensServiceServicer, register
from services.tokens.store import PageToken
from services.tokens.vault import Cipher, Decrypted, KeyRing, TokenVault, generate_keyring

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(100, 132))).decode()
RING_A = json.dumps({"primary": "key-a", "keys": {"key-a": KEY_A}})
RING_B = json.dumps({"primary": "key-b", "keys": {"key-b": KEY_B}})
RING_AB = json.dumps({"primary": "key-b", "keys": {"key-a": KEY_A, "key-b": KEY_B}})

PAGE = "109384756201938"
OTHER_PAGE = "117465829304716"
TOKEN = "EAAGpageTOKENsecretVALUE0123456789abcdefXYZ"
OTHER_TOKEN = "EAAGotherPAGEtokenVALUE9876543210zyxwvuABC"


def ref(page_id: str = PAGE, platform: int = events_pb2.FACEBOOK) -> tokens_pb2.PageRef:
    return tokens_pb2.PageRef(platform=platform, page_id=page_id)


@dataclass
class Tokens:
    stub: tokens_pb2_grpc.TokensServiceStub
    engine: AsyncEngine
    service: GrpcService


@asynccontextmanager
async def tokens_server(database_url: str, ring: str = RING_A) -> AsyncIterator[Tokens]:
    """A real tokens server on a free port, through the production bootstrap."""
    engine = create_engine(database_url, "tokens")
    vault = TokenVault(sessions(engine), Cipher(KeyRing.from_json(ring)))
    service = await start_server(
        names=[SERVICE_NAME],
        register=register(TokensServiceServicer(vault)),
        port=0,
        closers=[engine.dispose],
    )
    channel = open_channel(f"127.0.0.1:{service.port}")
    try:
        yield Tokens(tokens_pb2_grpc.TokensServiceStub(channel), engine, service)
    finally:
        await channel.close()
        await service.stop(grace=0)


@pytest.fixture
async def tokens(database_url: str) -> AsyncIterator[Tokens]:
    async with tokens_server(database_url) as server:
        yield server


async def stored_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(PageToken))).scalar_one()


async def rpc_error(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("platform", [events_pb2.FACEBOOK, events_pb2.INSTAGRAM])
async def test_round_trip(tokens: Tokens, platform: int) -> None:
    put = await tokens.stub.PutToken(
        tokens_pb2.PutTokenRequest(page=ref(platform=platform), token=TOKEN, expires_at_ms=123)
    )
    assert put.status == tokens_pb2.ACTIVE
    assert put.key_id == "key-a"

    decrypted = await tokens.stub.DecryptToken(
        tokens_pb2.DecryptTokenRequest(page=ref(platform=platform))
    )
    assert decrypted.token == TOKEN
    assert decrypted.status == tokens_pb2.ACTIVE

    status = await tokens.stub.GetTokenStatus(
        tokens_pb2.GetTokenStatusRequest(page=ref(platform=platform))
    )
    assert status.expires_at_ms == 123
    assert status.key_id == "key-a"


async def test_same_page_id_on_both_platforms_are_separate_tokens(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    await tokens.stub.PutToken(
        tokens_pb2.PutTokenRequest(page=ref(platform=events_pb2.INSTAGRAM), token=OTHER_TOKEN)
    )
    fb = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
    ig = await tokens.stub.DecryptToken(
        tokens_pb2.DecryptTokenRequest(page=ref(platform=events_pb2.INSTAGRAM))
    )
    assert (fb.token, ig.token) == (TOKEN, OTHER_TOKEN)


async def test_stored_row_holds_no_plaintext_and_a_fresh_nonce_each_time(tokens: Tokens) -> None:
    seen = []
    for _ in range(2):
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
        async with tokens.engine.connect() as conn:
            row = (await conn.execute(select(PageToken.nonce, PageToken.ciphertext))).one()
        assert TOKEN.encode() not in row.ciphertext
        assert len(row.nonce) == 12
        seen.append((row.nonce, row.ciphertext))
    assert seen[0][0] != seen[1][0]
    assert seen[0][1] != seen[1][1]
    assert await stored_rows(tokens.engine) == 1


async def test_put_replaces_the_token(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=OTHER_TOKEN))
    decrypted = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
    assert decrypted.token == OTHER_TOKEN


async def test_delete(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    first = await tokens.stub.DeleteToken(tokens_pb2.DeleteTokenRequest(page=ref()))
    second = await tokens.stub.DeleteToken(tokens_pb2.DeleteTokenRequest(page=ref()))
    assert (first.deleted, second.deleted) == (True, False)
    error = await rpc_error(tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_page_is_not_found(tokens: Tokens) -> None:
    for call in (
        tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())),
        tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref())),
        tokens.stub.MarkTokenInvalid(tokens_pb2.MarkTokenInvalidRequest(page=ref(), reason="x")),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert PAGE in error.details()


# --- binding and keys ------------------------------------------------------------------------


async def test_ciphertext_copied_to_another_page_is_data_loss(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(OTHER_PAGE), token=OTHER_TOKEN))
    async with tokens.engine.begin() as conn:
        source = (
            await conn.execute(
                select(PageToken.key_id, PageToken.nonce, PageToken.ciphertext).where(
                    PageToken.page_id == PAGE
                )
            )
        ).one()
        await conn.execute(
            update(PageToken)
            .where(PageToken.page_id == OTHER_PAGE)
            .values(key_id=source.key_id, nonce=source.nonce, ciphertext=source.ciphertext)
        )

    error = await rpc_error(
        tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref(OTHER_PAGE)))
    )
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert OTHER_PAGE in error.details()
    assert TOKEN not in error.details() and OTHER_TOKEN not in error.details()
    # The page the ciphertext came from still opens.
    good = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
    assert good.token == TOKEN


async def test_ciphertext_moved_across_platforms_is_data_loss(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    async with tokens.engine.begin() as conn:
        await conn.execute(update(PageToken).values(platform="INSTAGRAM"))
    error = await rpc_error(
        tokens.stub.DecryptToken(
            tokens_pb2.DecryptTokenRequest(page=ref(platform=events_pb2.INSTAGRAM))
        )
    )
    assert error.code() == grpc.StatusCode.DATA_LOSS


async def test_tampered_ciphertext_is_data_loss(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    async with tokens.engine.begin() as conn:
        ciphertext = (await conn.execute(select(PageToken.ciphertext))).scalar_one()
        flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
        await conn.execute(update(PageToken).values(ciphertext=flipped))
    error = await rpc_error(tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())))
    assert error.code() == grpc.StatusCode.DATA_LOSS


async def test_unknown_key_id_is_failed_precondition(database_url: str) -> None:
    async with tokens_server(database_url, RING_A) as old:
        await old.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    async with tokens_server(database_url, RING_B) as new:
        error = await rpc_error(new.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "key-a" in error.details()
        assert TOKEN not in error.details()


async def test_old_keys_still_decrypt_and_new_puts_use_the_primary(database_url: str) -> None:
    async with tokens_server(database_url, RING_A) as old:
        await old.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    async with tokens_server(database_url, RING_AB) as both:
        decrypted = await both.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
        assert decrypted.token == TOKEN
        put = await both.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
        assert put.key_id == "key-b"


# --- validation ------------------------------------------------------------------------------

BAD_PUTS = [
    (tokens_pb2.PutTokenRequest(token=TOKEN), "page"),
    (tokens_pb2.PutTokenRequest(page=ref(platform=0), token=TOKEN), "page.platform"),
    (tokens_pb2.PutTokenRequest(page=ref(platform=7), token=TOKEN), "page.platform"),
    (tokens_pb2.PutTokenRequest(page=ref(""), token=TOKEN), "page.page_id"),
    (tokens_pb2.PutTokenRequest(page=ref("12a4"), token=TOKEN), "page.page_id"),
    (tokens_pb2.PutTokenRequest(page=ref("1" * 33), token=TOKEN), "page.page_id"),
    (tokens_pb2.PutTokenRequest(page=ref(), token=""), "token"),
    (tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN + " x"), "token"),
    (tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN + "\n"), "token"),
    (tokens_pb2.PutTokenRequest(page=ref(), token="x" * 4097), "token"),
    (tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN, expires_at_ms=-1), "expires_at_ms"),
]


@pytest.mark.parametrize(("request_", "field"), BAD_PUTS)
async def test_bad_put_is_invalid_argument_and_stores_nothing(
    tokens: Tokens, request_: tokens_pb2.PutTokenRequest, field: str
) -> None:
    error = await rpc_error(tokens.stub.PutToken(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}:")
    assert TOKEN not in error.details()
    assert await stored_rows(tokens.engine) == 0


@pytest.mark.parametrize(
    ("page", "field"),
    [(ref(platform=0), "page.platform"), (ref(""), "page.page_id"), (ref("abc"), "page.page_id")],
)
async def test_bad_page_on_every_rpc(tokens: Tokens, page: tokens_pb2.PageRef, field: str) -> None:
    for call in (
        tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=page)),
        tokens.stub.DeleteToken(tokens_pb2.DeleteTokenRequest(page=page)),
        tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=page)),
        tokens.stub.MarkTokenInvalid(tokens_pb2.MarkTokenInvalidRequest(page=page)),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(f"{field}:")


# --- status ----------------------------------------------------------------------------------


async def test_mark_invalid_then_put_again_is_active(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    marked = await tokens.stub.MarkTokenInvalid(
        tokens_pb2.MarkTokenInvalidRequest(
            page=ref(), reason="session invalidated", graph_code=190, graph_subcode=460
        )
    )
    assert marked.status == tokens_pb2.REAUTH_REQUIRED
    status = await tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref()))
    assert status.status == tokens_pb2.REAUTH_REQUIRED
    assert (status.reason, status.graph_code, status.graph_subcode) == (
        "session invalidated",
        190,
        460,
    )
    # A REAUTH_REQUIRED token is still returned, flagged.
    decrypted = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
    assert (decrypted.token, decrypted.status) == (TOKEN, tokens_pb2.REAUTH_REQUIRED)

    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=OTHER_TOKEN))
    status = await tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref()))
    assert status.status == tokens_pb2.ACTIVE
    assert (status.reason, status.graph_code, status.graph_subcode) == ("", 0, 0)
    assert status.updated_at_ms >= status.created_at_ms > 0


async def test_status_never_carries_the_token(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    status = await tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref()))
    assert TOKEN not in str(status)
    assert TOKEN.encode() not in status.SerializeToString()
    assert status.status == tokens_pb2.ACTIVE and status.key_id == "key-a"


# --- secrecy ---------------------------------------------------------------------------------


async def test_token_never_in_logs_or_error_details(
    tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    details: list[str] = []
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(OTHER_PAGE), token=TOKEN))
    await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
    await tokens.stub.MarkTokenInvalid(
        tokens_pb2.MarkTokenInvalidRequest(page=ref(), reason="bad", graph_code=190)
    )
    for bad in (TOKEN + " ", TOKEN + "\t" + TOKEN, TOKEN * 200):
        error = await rpc_error(
            tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=bad))
        )
        details.append(error.details())
    async with tokens.engine.begin() as conn:
        await conn.execute(
            update(PageToken).where(PageToken.page_id == PAGE).values(nonce=b"0" * 12)
        )
    error = await rpc_error(tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())))
    details.append(error.details())

    assert all(TOKEN not in text for text in details)
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in repr(vars(record))


def test_reprs_hide_secrets() -> None:
    ring = KeyRing.from_json(RING_AB)
    assert KEY_A not in repr(ring) and KEY_B not in repr(ring)
    assert "key-a" in repr(ring)
    decrypted = Decrypted(Secret(TOKEN), "ACTIVE")
    assert TOKEN not in repr(decrypted) and TOKEN not in str(decrypted)
    sealed = Cipher(ring).seal("FACEBOOK", PAGE, Secret(TOKEN))
    assert "ciphertext" not in repr(sealed)
    settings = TokensSettings.from_env({"PAGEWIRE_KEYRING": RING_A})
    assert KEY_A not in repr(settings)


# --- settings --------------------------------------------------------------------------------

MALFORMED_RINGS = {
    "not json": "{primary: key-a",
    "not an object": json.dumps([KEY_A]),
    "no primary": json.dumps({"keys": {"key-a": KEY_A}}),
    "primary not in keys": json.dumps({"primary": "key-z", "keys": {"key-a": KEY_A}}),
    "no keys": json.dumps({"primary": "key-a", "keys": {}}),
    "short key": json.dumps(
        {"primary": "key-a", "keys": {"key-a": base64.b64encode(b"k" * 16).decode()}}
    ),
    "long key": json.dumps(
        {"primary": "key-a", "keys": {"key-a": base64.b64encode(b"k" * 33).decode()}}
    ),
    "not base64": json.dumps({"primary": "key-a", "keys": {"key-a": "%%%" + KEY_A}}),
    "bad key id": json.dumps({"primary": "a b", "keys": {"a b": KEY_A}}),
}


@pytest.mark.parametrize("problem", sorted(MALFORMED_RINGS))
def test_malformed_keyring_is_a_settings_error(problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        TokensSettings.from_env({"PAGEWIRE_KEYRING": MALFORMED_RINGS[problem]})
    message = str(caught.value)
    assert "PAGEWIRE_KEYRING" in message
    assert KEY_A not in message and KEY_A[:12] not in message


def test_missing_keyring_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="PAGEWIRE_KEYRING"):
        TokensSettings.from_env({})


def test_keyring_from_file_and_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keyring.json"
    path.write_text(generate_keyring())
    settings = TokensSettings.from_env({"PAGEWIRE_KEYRING_FILE": str(path)})
    assert settings.keyring.primary in settings.keyring.keys
    assert len(settings.keyring.keys[settings.keyring.primary]) == 32
    assert (settings.host, settings.port) == ("127.0.0.1", 50052)
    assert (settings.drain_s, settings.grace_s) == (0.5, 5.0)
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.database_url.endswith("tokens.db")


def test_generated_keyrings_differ_and_parse() -> None:
    first, second = KeyRing.from_json(generate_keyring()), KeyRing.from_json(generate_keyring())
    assert first.keys[first.primary] != second.keys[second.primary]


# --- embedded default ------------------------------------------------------------------------


async def test_vault_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'tokens.db'}"
    migrate.upgrade("tokens", url)
    engine = create_engine(url, "tokens")
    try:
        vault = TokenVault(sessions(engine), Cipher(KeyRing.from_json(RING_A)))
        await vault.put("FACEBOOK", PAGE, Secret(TOKEN), 0)
        await vault.mark_invalid("FACEBOOK", PAGE, "bad", 190, 460)
        await vault.put("FACEBOOK", PAGE, Secret(OTHER_TOKEN), 0)
        decrypted = await vault.decrypt("FACEBOOK", PAGE)
        assert (decrypted.token.get(), decrypted.status) == (OTHER_TOKEN, "ACTIVE")
        assert await vault.delete("FACEBOOK", PAGE)
    finally:
        await engine.dispose()
