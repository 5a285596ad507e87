"""A real tokens server for tests: production bootstrap, real PostgreSQL, optional mutual TLS."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pagewire.kit.channels import open_channel
from pagewire.kit.db import create_engine, sessions
from pagewire.kit.grpcserver import GrpcService, start_server
from pagewire.kit.tls import GrpcSecurity
from pagewire.proto import events_pb2, tokens_pb2, tokens_pb2_grpc
from services.tokens.access import Access
from services.tokens.keyring import KeyRing, KeyRingFile
from services.tokens.server import SERVICE_NAME, TokensServiceServicer, register
from services.tokens.store import AuditRecord
from services.tokens.vault import Cipher, TokenVault
from tests.support.waiting import connected

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(100, 132))).decode()
KEY_C = base64.b64encode(bytes(range(200, 232))).decode()
RING_A = json.dumps({"primary": "key-a", "keys": {"key-a": KEY_A}})
RING_B = json.dumps({"primary": "key-b", "keys": {"key-b": KEY_B}})
RING_AB = json.dumps({"primary": "key-b", "keys": {"key-a": KEY_A, "key-b": KEY_B}})
RING_A_PLUS_B = json.dumps({"primary": "key-a", "keys": {"key-a": KEY_A, "key-b": KEY_B}})


def ref(page_id: str, platform: int = events_pb2.FACEBOOK) -> tokens_pb2.PageRef:
    return tokens_pb2.PageRef(platform=platform, page_id=page_id)


@dataclass
class Tokens:
    """A running tokens server, its vault, and a stub on a channel of the test's choosing."""

    stub: tokens_pb2_grpc.TokensServiceStub
    engine: AsyncEngine
    service: GrpcService
    vault: TokenVault
    cipher: Cipher
    port: int
    security: GrpcSecurity | None

    @asynccontextmanager
    async def client(
        self, identity: GrpcSecurity | None = None
    ) -> AsyncIterator[tokens_pb2_grpc.TokensServiceStub]:
        """A stub on a fresh channel, as `identity` (its certificate) or plaintext."""
        target = f"127.0.0.1:{self.port}"
        if identity is None:
            channel = open_channel(target)
        else:
            channel = identity.channel(target, "tokens")
        try:
            yield tokens_pb2_grpc.TokensServiceStub(channel)
        finally:
            await channel.close()

    async def audit(self) -> list[Row]:  # type: ignore[type-arg]
        """Every audit record, oldest first, as rows (caller, action, page_id, outcome...)."""
        table = AuditRecord.__table__
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(table).order_by(table.c.id))).all())


@asynccontextmanager
async def tokens_server(
    database_url: str,
    ring: str = RING_A,
    *,
    security: GrpcSecurity | None = None,
    client: GrpcSecurity | None = None,
    keyring_file: Path | None = None,
    access: Access | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Tokens]:
    """A tokens server on a free port. With `security` it requires client certificates
    and `stub` speaks as `client` (default: a router certificate is expected from the test)."""
    engine = create_engine(database_url, "tokens")
    file = KeyRingFile(keyring_file) if keyring_file else None
    keyring = file.read() if file else KeyRing.from_json(ring)
    cipher = Cipher(keyring, file, clock=clock)
    vault = TokenVault(sessions(engine), cipher)
    if access is None:
        access = Access(allow_unauthenticated=security is None)
    servicer = TokensServiceServicer(vault, access)
    service = await start_server(
        names=[SERVICE_NAME],
        register=register(servicer),
        access=servicer.policy(),
        port=0,
        closers=[engine.dispose],
        credentials=security.server_credentials() if security else None,
    )
    target = f"127.0.0.1:{service.port}"
    channel: grpc.aio.Channel
    if security is not None:
        assert client is not None, "a TLS server needs a client identity for the stub"
        channel = client.channel(target, "tokens")
    else:
        # Plaintext only: some mTLS tests give the client a channel that must never connect.
        channel = await connected(open_channel(target))
    try:
        yield Tokens(
            tokens_pb2_grpc.TokensServiceStub(channel),
            engine,
            service,
            vault,
            cipher,
            service.port,
            security,
        )
    finally:
        await channel.close()
        await service.stop(grace=0)
