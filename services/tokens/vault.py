"""The token vault: AES-256-GCM over page tokens, bound to their page, with a key ring.

Plaintext exists only inside this module's callers' stack frames and in the
DecryptToken response; everything that holds it masks its repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pagewire.kit.db import DB_UNAVAILABLE, unavailable
from pagewire.kit.errors import DataLoss, FailedPrecondition, NotFound
from pagewire.kit.settings import Secret
from pagewire.kit.timeutil import now_ms
from services.tokens import store

KEY_BYTES = 32
NONCE_BYTES = 12  # 96 bits: the size GCM is specified for; random per encryption
# Bumped if the sealing format ever changes, so old and new ciphertexts cannot be confused.
_AD_PREFIX = b"pagewire/page-token/v1"
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


ACTIVE = "ACTIVE"
REAUTH_REQUIRED = "REAUTH_REQUIRED"


class KeyRingError(ValueError):
    """The key ring cannot be used; the message describes the problem, never key material."""


@dataclass(frozen=True)
class KeyRing:
    """Named 256-bit keys and which one encrypts; `repr` shows key ids only."""

    primary: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError("has no keys")
        for key_id, key in self.keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise KeyRingError(
                    f"key id {key_id[:64]!r} must be 1-64 letters, digits, '.', '_' or '-'"
                )
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {key_id!r} is {len(key)} bytes, must be {KEY_BYTES}")
        if self.primary not in self.keys:
            raise KeyRingError(f"primary key {self.primary[:64]!r} is not in keys")

    def __repr__(self) -> str:
        return f"KeyRing(primary={self.primary!r}, key_ids={sorted(self.keys)!r})"

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        """Parses `{"primary": id, "keys": {id: base64 of 32 bytes}}`."""
        try:
            data = json.loads(text)
        except ValueError:
            # The decoder's message quotes the document, which holds key material.
            raise KeyRingError("is not valid JSON") from None
        if not isinstance(data, dict):
            raise KeyRingError("must be a JSON object with 'primary' and 'keys'")
        primary = data.get("primary")
        if not isinstance(primary, str) or not primary:
            raise KeyRingError("has no 'primary' key id")
        raw_keys = data.get("keys")
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise KeyRingError("has no 'keys' object")
        keys: dict[str, bytes] = {}
        for key_id, encoded in raw_keys.items():
            if not isinstance(encoded, str):
                raise KeyRingError(f"key {key_id[:64]!r} must be a base64 string")
            try:
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"key {key_id[:64]!r} is not valid base64") from None
        return cls(primary=primary, keys=keys)


def generate_keyring() -> str:
    """A new key ring as JSON with one random primary key (for `make run`'s var/keyring.json)."""
    key_id = time.strftime("k%Y%m%d-", time.gmtime()) + secrets.token_hex(3)
    key = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")
    return json.dumps({"primary": key_id, "keys": {key_id: key}}, indent=2) + "\n"


@dataclass(frozen=True)
class Sealed:
    """A token as stored: which key, the nonce, ciphertext with the GCM tag."""

    key_id: str
    nonce: bytes
    ciphertext: bytes = field(repr=False)


def _associated_data(platform: str, page_id: str) -> bytes:
    # Binding the page into the tag means a ciphertext copied to another row fails to open.
    return b"|".join((_AD_PREFIX, platform.encode(), page_id.encode()))


class Cipher:
    """Seals and opens page tokens with the key ring; always seals with the primary key."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._aead = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    @property
    def primary_key_id(self) -> str:
        return self._keyring.primary

    def knows(self, key_id: str) -> bool:
        return key_id in self._aead

    def seal(self, platform: str, page_id: str, token: Secret) -> Sealed:
        nonce = secrets.token_bytes(NONCE_BYTES)
        aead = self._aead[self._keyring.primary]
        ciphertext = aead.encrypt(nonce, token.encode(), _associated_data(platform, page_id))
        return Sealed(self._keyring.primary, nonce, ciphertext)

    def open(self, platform: str, page_id: str, sealed: Sealed) -> Secret:
        aead = self._aead.get(sealed.key_id)
        if aead is None:
            raise FailedPrecondition(
                f"token of {platform} page {page_id} is encrypted with key {sealed.key_id!r},"
                " which is not in the key ring"
            )
        try:
            plaintext = aead.decrypt(
                sealed.nonce, sealed.ciphertext, _associated_data(platform, page_id)
            )
        except InvalidTag:
            raise DataLoss(
                f"token of {platform} page {page_id} cannot be decrypted:"
                " the stored ciphertext does not belong to this page or was altered"
            ) from None
        try:
            return Secret(plaintext.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataLoss(f"token of {platform} page {page_id} is not valid text") from None


@dataclass(frozen=True)
class Decrypted:
    """A decrypted token and its status; the token is masked in repr."""

    token: Secret
    status: str


@dataclass(frozen=True)
class TokenInfo:
    """Everything known about a stored token except the token."""

    status: str
    reason: str
    key_id: str
    graph_code: int
    graph_subcode: int
    created_at_ms: int
    updated_at_ms: int
    expires_at_ms: int


class TokenVault:
    """Stores, opens, forgets and flags page tokens; one session per call."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: Cipher) -> None:
        self._sessions = sessions
        self._cipher = cipher

    async def put(self, platform: str, page_id: str, token: Secret, expires_at_ms: int) -> str:
        """Encrypts and stores (or replaces) the token, ACTIVE again; returns the key id."""
        sealed = self._cipher.seal(platform, page_id, token)
        try:
            async with self._sessions() as session, session.begin():
                await store.upsert_token(
                    session,
                    platform=platform,
                    page_id=page_id,
                    key_id=sealed.key_id,
                    nonce=sealed.nonce,
                    ciphertext=sealed.ciphertext,
                    expires_at_ms=expires_at_ms,
                    now=now_ms(),
                )
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        return sealed.key_id

    async def decrypt(self, platform: str, page_id: str) -> Decrypted:
        row = await self._get(platform, page_id)
        sealed = Sealed(row.key_id, row.nonce, row.ciphertext)
        return Decrypted(self._cipher.open(platform, page_id, sealed), row.status)

    async def delete(self, platform: str, page_id: str) -> bool:
        try:
            async with self._sessions() as session, session.begin():
                return await store.delete_token(session, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None

    async def status(self, platform: str, page_id: str) -> TokenInfo:
        row = await self._get(platform, page_id)
        return TokenInfo(
            status=row.status,
            reason=row.reason,
            key_id=row.key_id,
            graph_code=row.graph_code,
            graph_subcode=row.graph_subcode,
            created_at_ms=row.created_at_ms,
            updated_at_ms=row.updated_at_ms,
            expires_at_ms=row.expires_at_ms,
        )

    async def mark_invalid(
        self, platform: str, page_id: str, reason: str, graph_code: int, graph_subcode: int
    ) -> str:
        """Flags the token REAUTH_REQUIRED; a later put makes it ACTIVE again."""
        try:
            async with self._sessions() as session, session.begin():
                found = await store.mark_invalid(
                    session,
                    platform,
                    page_id,
                    reason=reason,
                    graph_code=graph_code,
                    graph_subcode=graph_subcode,
                    now=now_ms(),
                )
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        if not found:
            raise NotFound(f"no token stored for {platform} page {page_id}")
        return REAUTH_REQUIRED

    async def unknown_key_ids(self) -> list[str]:
        """Key ids that seal stored tokens but are missing from the key ring."""
        try:
            async with self._sessions() as session:
                in_use = await store.key_ids_in_use(session)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        return [key_id for key_id in in_use if not self._cipher.knows(key_id)]

    async def _get(self, platform: str, page_id: str) -> store.PageToken:
        try:
            async with self._sessions() as session:
                row = await store.get_token(session, platform, page_id)
        except DB_UNAVAILABLE as exc:
            raise unavailable(exc) from None
        if row is None:
            raise NotFound(f"no token stored for {platform} page {page_id}")
        return row
