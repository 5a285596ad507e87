"""The tokens service over real gRPC on real PostgreSQL: sealing, binding, errors, secrecy."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pagewire.kit import migrate
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.settings import Secret, SettingsError
from pagewire.proto import events_pb2, tokens_pb2
from services.tokens.config import TokensSettings
from services.tokens.sealing import MAGIC, NONCE_BYTES, pack, unpack
from services.tokens.store import PageToken
from services.tokens.vault import Cipher, Decrypted, KeyRing, TokenVault, generate_keyring
from tests.support.tokens import (
    KEY_A,
    KEY_B,
    RING_A,
    RING_AB,
    RING_B,
    Tokens,
    tokens_server,
)

PAGE = "109384756201938"
OTHER_PAGE = "117465829304716"
TOKEN = "EAAGpageTOKENsecretVALUE0123456789abcdefXYZ"
OTHER_TOKEN = "EAAGotherPAGEtokenVALUE9876543210zyxwvuABC"


def ref(page_id: str = PAGE, platform: int = events_pb2.FACEBOOK) -> tokens_pb2.PageRef:
    return tokens_pb2.PageRef(platform=platform, page_id=page_id)


@pytest.fixture
async def tokens(database_url: str) -> AsyncIterator[Tokens]:
    async with tokens_server(database_url) as server:
        yield server


async def stored_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(PageToken))).scalar_one()


async def sealed_of(engine: AsyncEngine, page_id: str = PAGE) -> bytes:
    async with engine.connect() as conn:
        return (
            await conn.execute(select(PageToken.sealed).where(PageToken.page_id == page_id))
        ).scalar_one()


async def overwrite(engine: AsyncEngine, page_id: str = PAGE, **values: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(PageToken).where(PageToken.page_id == page_id).values(**values))


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
        envelope = unpack(await sealed_of(tokens.engine), "test")
        assert TOKEN.encode() not in envelope.ciphertext
        assert (envelope.version, envelope.key_id, len(envelope.nonce)) == (2, "key-a", 12)
        seen.append((envelope.nonce, envelope.ciphertext))
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
    await overwrite(tokens.engine, OTHER_PAGE, sealed=await sealed_of(tokens.engine, PAGE))

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
    sealed = await sealed_of(tokens.engine)
    for position in (-1, -20, len(sealed) - 30):  # tag, ciphertext, nonce
        flipped = bytearray(sealed)
        flipped[position] ^= 1
        await overwrite(tokens.engine, sealed=bytes(flipped))
        error = await rpc_error(
            tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
        )
        assert error.code() == grpc.StatusCode.DATA_LOSS
        assert TOKEN not in error.details()


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
    envelope = unpack(await sealed_of(tokens.engine), "test")
    await overwrite(
        tokens.engine,
        sealed=pack(2, envelope.key_id, b"0" * NONCE_BYTES, envelope.ciphertext),
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
    assert "blob" not in repr(sealed) and "key-b" in repr(sealed)
    assert "ciphertext" not in repr(unpack(sealed.blob, "test"))
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


# --- the envelope: every damage is a clear error, never garbage -----------------------------


async def test_swapped_rows_are_data_loss_both_ways(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(OTHER_PAGE), token=OTHER_TOKEN))
    mine, other = await sealed_of(tokens.engine, PAGE), await sealed_of(tokens.engine, OTHER_PAGE)
    await overwrite(tokens.engine, PAGE, sealed=other)
    await overwrite(tokens.engine, OTHER_PAGE, sealed=mine)
    for page in (PAGE, OTHER_PAGE):
        error = await rpc_error(
            tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref(page)))
        )
        assert error.code() == grpc.StatusCode.DATA_LOSS
        assert TOKEN not in error.details() and OTHER_TOKEN not in error.details()


async def test_relabelled_key_id_is_refused(database_url: str) -> None:
    async with tokens_server(database_url, RING_AB) as tokens:
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
        original = await sealed_of(tokens.engine)
        envelope = unpack(original, "test")
        assert envelope.key_id == "key-b"

        # The row's key id column says another key: the row disagrees with its envelope.
        await overwrite(tokens.engine, key_id="key-a")
        error = await rpc_error(
            tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
        )
        assert error.code() == grpc.StatusCode.DATA_LOSS

        # The envelope itself re-labelled with another key of the ring: the tag binds the id.
        relabelled = pack(2, "key-a", envelope.nonce, envelope.ciphertext)
        await overwrite(tokens.engine, key_id="key-a", sealed=relabelled)
        error = await rpc_error(
            tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
        )
        assert error.code() == grpc.StatusCode.DATA_LOSS

        # Re-labelled with a key id the ring does not hold.
        unknown = pack(2, "key-z", envelope.nonce, envelope.ciphertext)
        await overwrite(tokens.engine, key_id="key-z", sealed=unknown)
        error = await rpc_error(
            tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "key-z" in error.details()

        await overwrite(tokens.engine, key_id="key-b", sealed=original)
        good = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
        assert good.token == TOKEN


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda blob: blob[:-1], grpc.StatusCode.DATA_LOSS),  # one byte of the tag gone
        (lambda blob: blob[: len(blob) - 17], grpc.StatusCode.DATA_LOSS),  # shorter than a tag
        (lambda blob: blob[:10], grpc.StatusCode.DATA_LOSS),  # truncated inside the key id
        (lambda blob: blob[:3], grpc.StatusCode.DATA_LOSS),  # no header
        (lambda blob: b"", grpc.StatusCode.DATA_LOSS),
        (lambda blob: b"xx" + blob[2:], grpc.StatusCode.DATA_LOSS),  # not an envelope
        (lambda blob: MAGIC + bytes([9]) + blob[3:], grpc.StatusCode.FAILED_PRECONDITION),
        (lambda blob: MAGIC + bytes([1]) + blob[3:], grpc.StatusCode.DATA_LOSS),  # format 2→1
        (lambda blob: blob + b"\x00", grpc.StatusCode.DATA_LOSS),
    ],
    ids=[
        "tag-byte",
        "short",
        "in-key-id",
        "no-header",
        "empty",
        "not-envelope",
        "future-format",
        "downgraded-format",
        "appended",
    ],
)
async def test_damaged_envelope_is_a_clear_error(tokens: Tokens, damage, code) -> None:  # type: ignore[no-untyped-def]
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    sealed = await sealed_of(tokens.engine)
    values: dict[str, object] = {"sealed": damage(sealed)}
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        values["format"] = 9
    await overwrite(tokens.engine, **values)
    error = await rpc_error(tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())))
    assert error.code() == code
    assert PAGE in error.details()
    assert TOKEN not in error.details()


async def test_legacy_format_tokens_still_open_and_report_their_format(tokens: Tokens) -> None:
    """A token sealed before key ids were bound (format 1, as migration 0002 repacks it)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = b"n" * NONCE_BYTES
    ad = b"pagewire/page-token/v1|FACEBOOK|" + PAGE.encode()
    ciphertext = AESGCM(base64.b64decode(KEY_A)).encrypt(nonce, TOKEN.encode(), ad)
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=OTHER_TOKEN))
    await overwrite(tokens.engine, format=1, sealed=pack(1, "key-a", nonce, ciphertext))

    decrypted = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
    assert decrypted.token == TOKEN
    status = await tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref()))
    assert (status.key_id, status.format_version) == ("key-a", 1)

    # Format 1 binds the page too: moved to another page it does not open.
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(OTHER_PAGE), token=TOKEN))
    await overwrite(tokens.engine, OTHER_PAGE, format=1, sealed=pack(1, "key-a", nonce, ciphertext))
    error = await rpc_error(
        tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref(OTHER_PAGE)))
    )
    assert error.code() == grpc.StatusCode.DATA_LOSS


async def test_status_reports_key_and_format(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    status = await tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=ref()))
    assert (status.status, status.key_id, status.format_version) == (tokens_pb2.ACTIVE, "key-a", 2)
    assert status.created_at_ms > 0 and status.updated_at_ms >= status.created_at_ms


# --- audit -------------------------------------------------------------------------------------


async def test_every_change_and_decrypt_is_audited_without_the_token(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref()))
    await tokens.stub.MarkTokenInvalid(
        tokens_pb2.MarkTokenInvalidRequest(page=ref(), reason="expired", graph_code=190)
    )
    await tokens.stub.DeleteToken(tokens_pb2.DeleteTokenRequest(page=ref()))
    await rpc_error(tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())))
    await rpc_error(tokens.stub.MarkTokenInvalid(tokens_pb2.MarkTokenInvalidRequest(page=ref())))

    rows = await tokens.audit()
    assert [(r.action, r.outcome) for r in rows] == [
        ("PUT", "OK"),
        ("DECRYPT", "OK"),
        ("MARK_INVALID", "OK"),
        ("DELETE", "OK"),
        ("DECRYPT", "NOT_FOUND"),
        ("MARK_INVALID", "NOT_FOUND"),
    ]
    assert {(r.platform, r.page_id) for r in rows} == {("FACEBOOK", PAGE)}
    # A plaintext in-process server has no caller identity; with mTLS it is the certificate's.
    assert {r.caller for r in rows} == {"unauthenticated"}
    assert all(r.at_ms > 0 for r in rows)
    assert "key-a" in rows[0].detail and "190" in rows[2].detail
    assert all(TOKEN not in repr(tuple(r)) for r in rows)


async def test_a_failed_decrypt_is_audited_with_its_status(tokens: Tokens) -> None:
    await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(), token=TOKEN))
    await overwrite(tokens.engine, sealed=b"pw\x02")
    await rpc_error(tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref())))
    last = (await tokens.audit())[-1]
    assert (last.action, last.outcome) == ("DECRYPT", "DATA_LOSS")


async def test_list_audit_filters_and_pages(tokens: Tokens) -> None:
    for page in (PAGE, OTHER_PAGE):
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref(page), token=TOKEN))
        await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref(page)))
    mine = await tokens.stub.ListAudit(tokens_pb2.ListAuditRequest(page_id=PAGE))
    assert [(e.action, e.page.page_id) for e in mine.entries] == [
        ("DECRYPT", PAGE),
        ("PUT", PAGE),
    ]
    first = await tokens.stub.ListAudit(tokens_pb2.ListAuditRequest(limit=3))
    assert len(first.entries) == 3
    rest = await tokens.stub.ListAudit(tokens_pb2.ListAuditRequest(before_id=first.entries[-1].id))
    assert len(rest.entries) == 1
    instagram = await tokens.stub.ListAudit(
        tokens_pb2.ListAuditRequest(platform=events_pb2.INSTAGRAM)
    )
    assert list(instagram.entries) == []
    for bad, field in (
        (tokens_pb2.ListAuditRequest(page_id="12x"), "page_id"),
        (tokens_pb2.ListAuditRequest(limit=-1), "limit"),
        (tokens_pb2.ListAuditRequest(limit=5000), "limit"),
        (tokens_pb2.ListAuditRequest(platform=9), "platform"),
    ):
        error = await rpc_error(tokens.stub.ListAudit(bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(f"{field}:")


def test_the_secret_scan_catches_tokens_in_messages_extras_and_tracebacks() -> None:
    """The whole-run scan (tests/support/secretscan.py) would fail the run on these."""
    from tests.support.secretscan import _Leaks, _ScanHandler

    leaks = _Leaks()
    logger = logging.getLogger("secretscan.selftest")
    logger.propagate = False
    handler = _ScanHandler(leaks)
    logger.addHandler(handler)
    try:
        logger.warning("fine: %s", Secret(TOKEN))
        logger.warning("leaked %s", TOKEN)
        logger.warning("extra", extra={"token": OTHER_TOKEN})
        try:
            raise ValueError(f"bad {TOKEN}")
        except ValueError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    assert len(leaks.found) == 3 and leaks.records == 4
    assert all(TOKEN not in line and OTHER_TOKEN not in line for line in leaks.found)
