"""Sealing page tokens: AES-256-GCM in a versioned, self-describing envelope.

Envelope (one binary column)::

    b"pw" | format version (1 byte) | key id length (1 byte) | key id | nonce (12) | ct+tag

Format 2 authenticates, as associated data, the format, the purpose, the platform,
the page id and the key id, each length-prefixed: a ciphertext copied to another
page's row, re-labelled with another key id or moved between formats fails to open.
Format 1 is what tokens written before key ids were bound hold (migration 0002
repacked them without decrypting): associated data `pagewire/page-token/v1|platform|page`.
They still open, and the next rotation rewraps them into format 2.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pagewire.kit.errors import DataLoss, FailedPrecondition
from pagewire.kit.settings import Secret
from services.tokens.keyring import KEY_BYTES, KeyRing, KeyRingError, KeyRingFile, new_key_id

FORMAT_LEGACY = 1
FORMAT_CURRENT = 2
FORMATS = (FORMAT_LEGACY, FORMAT_CURRENT)
MAGIC = b"pw"
NONCE_BYTES = 12  # 96 bits: the size GCM is specified for; random per encryption
TAG_BYTES = 16
PURPOSE = b"page-access-token"
_LEGACY_AD_PREFIX = b"pagewire/page-token/v1"
_AD_LABEL = b"pagewire/page-token"
# A key id the ring does not hold makes the service re-read the key ring file, at most this often.
RELOAD_INTERVAL_S = 1.0

log = logging.getLogger("pagewire.tokens")


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope; `repr` shows the version and key id only."""

    version: int
    key_id: str
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True)
class Sealed:
    """A sealed token ready to store: the envelope and, for indexing, its key id and format."""

    key_id: str
    format: int
    blob: bytes = field(repr=False)


def pack(version: int, key_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
    encoded = key_id.encode("ascii")
    return MAGIC + bytes([version, len(encoded)]) + encoded + nonce + ciphertext


def unpack(blob: bytes, where: str) -> Envelope:
    """Parses an envelope; a damaged one is DataLoss, a newer format FailedPrecondition."""
    if len(blob) < 4 or blob[:2] != MAGIC:
        raise DataLoss(f"token of {where} is damaged: not a sealed token")
    version, id_length = blob[2], blob[3]
    if version not in FORMATS:
        raise FailedPrecondition(
            f"token of {where} is in ciphertext format {version}, which this version of the"
            " tokens service cannot read"
        )
    body = blob[4:]
    if len(body) < id_length + NONCE_BYTES + TAG_BYTES:
        raise DataLoss(f"token of {where} is damaged: the stored ciphertext is truncated")
    try:
        key_id = body[:id_length].decode("ascii")
    except UnicodeDecodeError:
        raise DataLoss(f"token of {where} is damaged: unreadable key id") from None
    nonce = body[id_length : id_length + NONCE_BYTES]
    return Envelope(version, key_id, nonce, body[id_length + NONCE_BYTES :])


def associated_data(version: int, platform: str, page_id: str, key_id: str) -> bytes:
    """What the tag binds besides the token: see the module docstring."""
    if version == FORMAT_LEGACY:
        return b"|".join((_LEGACY_AD_PREFIX, platform.encode(), page_id.encode()))
    parts = (
        _AD_LABEL,
        bytes([version]),
        PURPOSE,
        platform.encode(),
        page_id.encode(),
        key_id.encode(),
    )
    return b"".join(len(part).to_bytes(2, "big") + part for part in parts)


class Cipher:
    """Seals with a chosen key (the vault's primary), opens with whichever key an envelope names.

    Holds the key ring; with a file it re-reads it on an unknown key id (a key
    added to the Secret) and can add a generated key or drop a retired one when
    the file is writable.
    """

    def __init__(
        self,
        keyring: KeyRing,
        file: KeyRingFile | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._file = file
        self._clock = clock
        self._last_reload = clock()
        self._set(keyring)

    def _set(self, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._aead = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    @property
    def primary_key_id(self) -> str:
        """The key ring's own primary: the vault's primary until the first rotation."""
        return self._keyring.primary

    @property
    def has_file(self) -> bool:
        return self._file is not None

    def knows(self, key_id: str) -> bool:
        """Whether the ring holds `key_id`, re-reading the file (rate-limited) when not."""
        if key_id in self._aead:
            return True
        self.reload()
        return key_id in self._aead

    def reload(self, *, force: bool = False) -> None:
        """Re-reads the key ring file; a broken file keeps the ring in use and is logged."""
        if self._file is None:
            return
        now = self._clock()
        if not force and now - self._last_reload < RELOAD_INTERVAL_S:
            return
        self._last_reload = now
        try:
            fresh = self._file.read()
        except KeyRingError as exc:
            log.error("key ring file not reloaded", extra={"problem": str(exc)})
            return
        gone = sorted(set(self._keyring.keys) - set(fresh.keys))
        added = sorted(set(fresh.keys) - set(self._keyring.keys))
        if gone or added:
            log.warning("key ring reloaded", extra={"added": added, "removed": gone})
        self._set(fresh)

    def seal(self, platform: str, page_id: str, token: Secret, key_id: str | None = None) -> Sealed:
        """Encrypts with `key_id` (default: the ring's primary) in the current format."""
        key_id = key_id or self._keyring.primary
        if not self.knows(key_id):
            raise FailedPrecondition(
                f"the primary key {key_id!r} is not in this replica's key ring; add it to the"
                " key ring file (Secret) and wait until the mount shows it"
            )
        nonce = secrets.token_bytes(NONCE_BYTES)
        ad = associated_data(FORMAT_CURRENT, platform, page_id, key_id)
        ciphertext = self._aead[key_id].encrypt(nonce, token.encode(), ad)
        return Sealed(key_id, FORMAT_CURRENT, pack(FORMAT_CURRENT, key_id, nonce, ciphertext))

    def open(
        self,
        platform: str,
        page_id: str,
        blob: bytes,
        *,
        key_id: str | None = None,
        format: int | None = None,
    ) -> Secret:
        """Decrypts a stored envelope; `key_id`/`format` are the row's index columns, checked.

        Never returns garbage: any mismatch is DataLoss, a key the ring lacks is
        FailedPrecondition. Messages name the page and key id, never the token.
        """
        where = f"{platform} page {page_id}"
        envelope = unpack(blob, where)
        if (key_id is not None and key_id != envelope.key_id) or (
            format is not None and format != envelope.version
        ):
            raise DataLoss(
                f"token of {where} is damaged: the row's key id or format does not match"
                " its ciphertext"
            )
        if not self.knows(envelope.key_id):
            raise FailedPrecondition(
                f"token of {where} is encrypted with key {envelope.key_id!r},"
                " which is not in the key ring"
            )
        ad = associated_data(envelope.version, platform, page_id, envelope.key_id)
        try:
            plaintext = self._aead[envelope.key_id].decrypt(envelope.nonce, envelope.ciphertext, ad)
        except InvalidTag:
            raise DataLoss(
                f"token of {where} cannot be decrypted: the stored ciphertext does not belong"
                " to this page or key, or was altered"
            ) from None
        try:
            return Secret(plaintext.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataLoss(f"token of {where} is not valid text") from None

    def generate_key(self) -> str:
        """Adds a random key to the key ring file and makes it the file's primary."""
        file = self._writable_file("generate a key")
        try:
            current = file.read()
        except KeyRingError as exc:
            raise FailedPrecondition(f"the key ring {exc}") from None
        key_id = new_key_id()
        while key_id in current.keys:
            key_id = new_key_id()
        ring = current.with_key(key_id, secrets.token_bytes(KEY_BYTES), primary=True)
        self._write(file, ring, "add a generated key to")
        self._set(ring)
        return key_id

    def drop_key(self, key_id: str, primary: str) -> bool:
        """Removes a retired key from the ring, and from the file when it is writable."""
        updated = False
        if self._file is not None and key_id in self._keyring.keys:
            try:
                ring = self._file.read().without(key_id, primary)
                self._file.write(ring)
                updated = True
            except (KeyRingError, OSError) as exc:
                log.info(
                    "key ring file not updated",
                    extra={"key_id": key_id, "problem": getattr(exc, "strerror", None) or str(exc)},
                )
        if key_id in self._keyring.keys:
            try:
                self._set(self._keyring.without(key_id, primary))
            except KeyRingError:
                pass  # it was the last key or the ring's own primary: keep the ring as it is
        return updated

    def _writable_file(self, what: str) -> KeyRingFile:
        if self._file is None:
            raise FailedPrecondition(
                f"cannot {what}: the key ring comes from PAGEWIRE_KEYRING, not a file; add a key"
                " to it, restart, then rotate with that key id"
            )
        return self._file

    def _write(self, file: KeyRingFile, ring: KeyRing, what: str) -> None:
        try:
            file.write(ring)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot {what} the key ring file {file.path} ({exc.strerror}); on Kubernetes"
                " the key ring is a read-only Secret: add the new key to the Secret, wait for"
                " the mount to show it, then rotate with its key id"
            ) from None
