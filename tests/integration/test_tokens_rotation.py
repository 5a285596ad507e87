"""Key rotation on real PostgreSQL through real gRPC: rewrap under load, key ids in use, removal."""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pagewire.kit.settings import Secret
from pagewire.proto import events_pb2, tokens_pb2
from services.tokens.keyring import KeyRing, KeyRingFile
from services.tokens.sealing import NONCE_BYTES, Cipher, pack
from services.tokens.store import PageToken
from tests.support.tokens import (
    KEY_A,
    RING_A,
    RING_A_PLUS_B,
    RING_AB,
    Tokens,
    ref,
    tokens_server,
)

LOAD_TOKENS = 2000
LEGACY_TOKENS = 100


def token_for(page_id: str) -> str:
    return f"EAAGrotation{page_id}TOKEN0123456789"


def page_ids(n: int, start: int = 100_000_000_000) -> list[str]:
    return [str(start + i) for i in range(n)]


async def seed(engine: AsyncEngine, cipher: Cipher, pages: list[str], *, legacy: int = 0) -> None:
    """Stores tokens for `pages` sealed with the cipher's primary; the first `legacy` in
    format 1, as migration 0002 leaves tokens written before key ids were bound."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    rows = []
    for i, page in enumerate(pages):
        if i < legacy:
            nonce = i.to_bytes(NONCE_BYTES, "big")
            ad = b"pagewire/page-token/v1|FACEBOOK|" + page.encode()
            key = cipher.keyring.keys[cipher.primary_key_id]
            body = AESGCM(key).encrypt(nonce, token_for(page).encode(), ad)
            key_id, fmt, blob = (
                cipher.primary_key_id,
                1,
                pack(1, cipher.primary_key_id, nonce, body),
            )
        else:
            sealed = cipher.seal("FACEBOOK", page, Secret(token_for(page)))
            key_id, fmt, blob = sealed.key_id, sealed.format, sealed.blob
        rows.append(
            {
                "platform": "FACEBOOK",
                "page_id": page,
                "key_id": key_id,
                "format": fmt,
                "sealed": blob,
                "status": "ACTIVE",
                "reason": "",
                "graph_code": 0,
                "graph_subcode": 0,
                "expires_at_ms": 0,
                "created_at_ms": 1,
                "updated_at_ms": 1,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(insert(PageToken), rows)


async def count(engine: AsyncEngine, *where) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        stmt = select(func.count()).select_from(PageToken)
        for clause in where:
            stmt = stmt.where(clause)
        return (await conn.execute(stmt)).scalar_one()


async def rpc_error(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_rotation_under_load(database_url: str) -> None:
    """2,000 tokens rewrapped while DecryptToken and PutToken keep being served."""
    async with tokens_server(database_url, RING_A_PLUS_B) as tokens:
        pages = page_ids(LOAD_TOKENS)
        await seed(tokens.engine, tokens.cipher, pages, legacy=LEGACY_TOKENS)
        assert await count(tokens.engine, PageToken.key_id == "key-a") == LOAD_TOKENS

        rotation: asyncio.Task[tokens_pb2.RotateKeysResponse] | None = None
        decrypted_during = 0
        errors: list[BaseException] = []
        seen_midway: list[int] = []
        put_during: list[str] = []
        rng = random.Random(5)

        async def decrypt_worker() -> None:
            nonlocal decrypted_during
            while rotation is None or not rotation.done():
                page = rng.choice(pages)
                try:
                    reply = await tokens.stub.DecryptToken(
                        tokens_pb2.DecryptTokenRequest(page=ref(page)), timeout=10
                    )
                except grpc.aio.AioRpcError as exc:
                    errors.append(exc)
                    return
                assert reply.token == token_for(page)
                if rotation is not None and not rotation.done():
                    decrypted_during += 1

        async def put_worker() -> None:
            for page in page_ids(50, start=900_000_000_000):
                if rotation is not None and rotation.done():
                    break
                await tokens.stub.PutToken(
                    tokens_pb2.PutTokenRequest(page=ref(page), token=token_for(page)), timeout=10
                )
                put_during.append(page)

        async def observer() -> None:
            # Sees the rewrap half done: batches commit one by one while the others run.
            while rotation is None or not rotation.done():
                left = await count(tokens.engine, PageToken.key_id == "key-a")
                if 0 < left < LOAD_TOKENS:
                    seen_midway.append(left)

        workers = [asyncio.create_task(decrypt_worker()) for _ in range(8)]

        async def rotate() -> tokens_pb2.RotateKeysResponse:
            return await tokens.stub.RotateKeys(
                tokens_pb2.RotateKeysRequest(new_key_id="key-b", batch_size=100), timeout=120
            )

        rotation = asyncio.create_task(rotate())
        side = [asyncio.create_task(put_worker()), asyncio.create_task(observer())]
        reply = await rotation
        await asyncio.gather(*workers, *side)

        assert errors == []
        assert decrypted_during > 0 and seen_midway
        assert (reply.previous_primary_key_id, reply.primary_key_id) == ("key-a", "key-b")
        # A put that read the primary before the switch committed sealed with key-a; it was
        # committed before the switch (the switch waits for it) and so rewrapped with the rest.
        assert LOAD_TOKENS <= reply.rewrapped <= LOAD_TOKENS + len(put_during)
        assert reply.failed == 0
        # Nothing is left on the old key or in the old format, puts made meanwhile included.
        assert await count(tokens.engine, PageToken.key_id == "key-a") == 0
        assert await count(tokens.engine, PageToken.format != 2) == 0
        assert await count(tokens.engine) == LOAD_TOKENS + len(put_during)

        keys = await tokens.stub.ListKeys(tokens_pb2.ListKeysRequest())
        usage = {k.key_id: (k.tokens, k.legacy_format_tokens, k.primary) for k in keys.keys}
        assert usage == {"key-a": (0, 0, False), "key-b": (LOAD_TOKENS + len(put_during), 0, True)}

        removed = await tokens.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id="key-a"))
        assert not removed.key_ring_file_updated and "key-a" in removed.note
        for page in rng.sample(pages, 20):
            reply_ = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref(page)))
            assert reply_.token == token_for(page)
        audit = [(r.action, r.outcome) for r in await tokens.audit() if r.action != "DECRYPT"]
        assert ("ROTATE", "OK") in audit and audit[-1] == ("REMOVE_KEY", "OK")
        started, finished = [r for r in await tokens.audit() if r.action == "ROTATE"]
        assert started.detail == "primary key-a -> key-b; rewrapping"
        assert f"rewrapped {reply.rewrapped}; failed 0" in finished.detail


async def test_removing_a_key_in_use_is_refused_until_rotated(database_url: str) -> None:
    async with tokens_server(database_url, RING_A) as old:
        await old.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref("1001"), token="EAAGx1"))
    async with tokens_server(database_url, RING_AB) as tokens:
        # New tokens use the key ring's primary (key-b); the old one stays on key-a.
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref("1002"), token="EAAGx2"))
        keys = await tokens.stub.ListKeys(tokens_pb2.ListKeysRequest())
        assert {k.key_id: k.tokens for k in keys.keys} == {"key-a": 1, "key-b": 1}
        assert keys.primary_key_id == "key-b" and keys.format_version == 2

        in_use = await rpc_error(tokens.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id="key-a")))
        assert in_use.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "1 stored token" in in_use.details()
        primary = await rpc_error(
            tokens.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id="key-b"))
        )
        assert primary.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "primary" in primary.details()
        unknown = await rpc_error(
            tokens.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id="key-z"))
        )
        assert unknown.code() == grpc.StatusCode.NOT_FOUND

        rotated = await tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-b"))
        assert (rotated.previous_primary_key_id, rotated.rewrapped) == ("key-b", 1)
        await tokens.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id="key-a"))
        keys = await tokens.stub.ListKeys(tokens_pb2.ListKeysRequest())
        retired = next(k for k in keys.keys if k.key_id == "key-a")
        assert retired.retired and retired.retired_at_ms > 0 and retired.tokens == 0
        # A retired key never comes back as the primary.
        again = await rpc_error(
            tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-a"))
        )
        assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
        decrypted = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref("1001")))
        assert decrypted.token == "EAAGx1"
        outcomes = [(r.action, r.outcome) for r in await tokens.audit() if r.action != "PUT"]
        assert outcomes[:3] == [
            ("REMOVE_KEY", "FAILED_PRECONDITION"),
            ("REMOVE_KEY", "FAILED_PRECONDITION"),
            ("REMOVE_KEY", "NOT_FOUND"),
        ]


async def test_damaged_tokens_are_reported_and_keep_their_key(database_url: str) -> None:
    async with tokens_server(database_url, RING_A_PLUS_B) as tokens:
        pages = page_ids(30)
        await seed(tokens.engine, tokens.cipher, pages)
        async with tokens.engine.begin() as conn:
            await conn.execute(
                update(PageToken).where(PageToken.page_id == pages[7]).values(sealed=b"pw\x02")
            )
        reply = await tokens.stub.RotateKeys(
            tokens_pb2.RotateKeysRequest(new_key_id="key-b", batch_size=4)
        )
        assert (reply.rewrapped, reply.failed) == (29, 1)
        assert [p.page_id for p in reply.failed_pages] == [pages[7]]
        assert await count(tokens.engine, PageToken.key_id == "key-a") == 1
        refused = await rpc_error(
            tokens.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id="key-a"))
        )
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_rotate_resumes_and_is_idempotent(database_url: str) -> None:
    async with tokens_server(database_url, RING_A_PLUS_B) as tokens:
        await seed(tokens.engine, tokens.cipher, page_ids(10))
        first = await tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-b"))
        second = await tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-b"))
        assert (first.rewrapped, second.rewrapped) == (10, 0)
        assert second.previous_primary_key_id == "key-b"
        back = await tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-a"))
        assert (back.primary_key_id, back.rewrapped) == ("key-a", 10)


async def test_rotation_picks_up_a_key_added_to_the_file(database_url: str, tmp_path: Path) -> None:
    """The operator adds the key to the Secret; the service re-reads the file on rotate."""
    path = tmp_path / "keyring.json"
    path.write_text(RING_A)
    async with tokens_server(database_url, keyring_file=path) as tokens:
        missing = await rpc_error(
            tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-b"))
        )
        assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "key-b" in missing.details() and "not in the key ring" in missing.details()
        path.write_text(RING_A_PLUS_B)  # what the kubelet does when the Secret changes
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref("42"), token="EAAGx"))
        reply = await tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-b"))
        assert (reply.primary_key_id, reply.rewrapped) == ("key-b", 1)
        assert not reply.key_ring_file_updated
        assert path.read_text() == RING_A_PLUS_B  # the service never writes a Secret's file


async def test_generated_key_goes_into_a_writable_file(database_url: str, tmp_path: Path) -> None:
    """`make run`: the key ring file is the service's own; rotate adds a key to it."""
    path = tmp_path / "keyring.json"
    path.write_text(RING_A)
    path.chmod(0o600)
    async with tokens_server(database_url, keyring_file=path) as tokens:
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref("42"), token="EAAGx"))
        reply = await tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(generate_key=True))
        assert reply.key_ring_file_updated and reply.rewrapped == 1
        assert reply.previous_primary_key_id == "key-a"
        ring = KeyRing.from_json(path.read_text())
        assert ring.primary == reply.primary_key_id != "key-a"
        assert set(ring.keys) == {"key-a", reply.primary_key_id}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(os.listdir(tmp_path)) == ["keyring.json"]

        removed = await tokens.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id="key-a"))
        assert removed.key_ring_file_updated
        assert set(KeyRing.from_json(path.read_text()).keys) == {reply.primary_key_id}
        decrypted = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref("42")))
        assert decrypted.token == "EAAGx"


async def test_generating_needs_a_writable_key_ring_file(database_url: str, tmp_path: Path) -> None:
    async with tokens_server(database_url, RING_A) as tokens:
        inline = await rpc_error(
            tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(generate_key=True))
        )
        assert inline.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "PAGEWIRE_KEYRING" in inline.details()
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    path = secret_dir / "keyring.json"
    path.write_text(RING_A)
    async with tokens_server(database_url, keyring_file=path) as tokens:
        # A read-only mount refuses the write. Tests run as root, which ignores file modes,
        # so block the service's temporary file with a directory of the same name instead.
        (secret_dir / f".keyring.json.{os.getpid()}.tmp").mkdir()
        refused = await rpc_error(
            tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(generate_key=True))
        )
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Secret" in refused.details()
        status = await tokens.stub.ListKeys(tokens_pb2.ListKeysRequest())
        assert status.primary_key_id == "key-a"
        assert path.read_text() == RING_A


async def test_replicas_agree_on_the_primary(database_url: str, tmp_path: Path) -> None:
    """A rotation through one replica switches every replica; one whose Secret mount is
    not updated yet refuses to seal rather than use the old key, and catches up."""
    first_file, second_file = tmp_path / "one.json", tmp_path / "two.json"
    first_file.write_text(RING_A_PLUS_B)
    second_file.write_text(RING_A)
    now = [0.0]
    async with (
        tokens_server(database_url, keyring_file=first_file) as one,
        tokens_server(database_url, keyring_file=second_file, clock=lambda: now[0]) as two,
    ):
        await two.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref("1"), token="EAAGone"))
        await one.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-b"))

        stale = await rpc_error(
            two.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref("2"), token="EAAGtwo"))
        )
        assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "key-b" in stale.details()
        # Rewrapped by replica one; replica two cannot open it until its mount catches up.
        behind = await rpc_error(
            two.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref("1")))
        )
        assert behind.code() == grpc.StatusCode.FAILED_PRECONDITION

        second_file.write_text(RING_A_PLUS_B)
        now[0] += 5  # past the reload interval: the next unknown key id re-reads the file
        put = await two.stub.PutToken(tokens_pb2.PutTokenRequest(page=ref("2"), token="EAAGtwo"))
        assert put.key_id == "key-b"
        decrypted = await two.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=ref("1")))
        assert decrypted.token == "EAAGone"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (tokens_pb2.RotateKeysRequest(), "new_key_id"),
        (tokens_pb2.RotateKeysRequest(new_key_id="a b"), "new_key_id"),
        (tokens_pb2.RotateKeysRequest(new_key_id="k", generate_key=True), "new_key_id"),
        (tokens_pb2.RotateKeysRequest(new_key_id="key-b", batch_size=-1), "batch_size"),
        (tokens_pb2.RotateKeysRequest(new_key_id="key-b", batch_size=10_000), "batch_size"),
    ],
)
async def test_bad_rotation_requests(
    database_url: str, request_: tokens_pb2.RotateKeysRequest, field: str
) -> None:
    async with tokens_server(database_url, RING_A_PLUS_B) as tokens:
        error = await rpc_error(tokens.stub.RotateKeys(request_))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(f"{field}:")
        keys = await tokens.stub.ListKeys(tokens_pb2.ListKeysRequest())
        assert keys.primary_key_id == "key-a"


async def test_bad_remove_key_requests(tokens_a: Tokens) -> None:
    for key_id in ("", "a b", "x" * 65):
        error = await rpc_error(tokens_a.stub.RemoveKey(tokens_pb2.RemoveKeyRequest(key_id=key_id)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("key_id:")


@pytest.fixture
async def tokens_a(database_url: str):  # type: ignore[no-untyped-def]
    async with tokens_server(database_url, RING_A) as server:
        yield server


def test_cipher_rereads_its_file_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(RING_A)
    now = [100.0]
    cipher = Cipher(KeyRing.from_json(RING_A), KeyRingFile(path), clock=lambda: now[0])
    path.write_text(RING_A_PLUS_B)
    assert not cipher.knows("key-b")  # read at start, less than a second ago
    now[0] += 1.5
    assert cipher.knows("key-b")
    path.write_text("{broken")
    now[0] += 1.5
    assert not cipher.knows("key-z") and cipher.knows("key-b")  # a broken file keeps the ring
    assert json.loads(RING_A)["keys"]["key-a"] == KEY_A


async def test_instagram_tokens_rotate_too(database_url: str) -> None:
    async with tokens_server(database_url, RING_A_PLUS_B) as tokens:
        page = ref("17841405822304914", events_pb2.INSTAGRAM)
        await tokens.stub.PutToken(tokens_pb2.PutTokenRequest(page=page, token="IGAAtoken"))
        await tokens.stub.RotateKeys(tokens_pb2.RotateKeysRequest(new_key_id="key-b"))
        status = await tokens.stub.GetTokenStatus(tokens_pb2.GetTokenStatusRequest(page=page))
        assert status.key_id == "key-b"
        decrypted = await tokens.stub.DecryptToken(tokens_pb2.DecryptTokenRequest(page=page))
        assert decrypted.token == "IGAAtoken"
