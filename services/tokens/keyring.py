"""The key ring: named AES-256 keys, one primary, from a file or the environment.

On Kubernetes the file is a mounted Secret (read-only; the kubelet updates it in
place when the Secret changes), so the service re-reads it when it meets a key id
it does not know. With `make run` the file is writable and the service can add a
generated key to it itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KEY_BYTES = 32
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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
            if not KEY_ID.fullmatch(key_id):
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

    def to_json(self) -> str:
        """The file form; key material, so only ever written to a 0600 file."""
        keys = {k: base64.b64encode(v).decode("ascii") for k, v in sorted(self.keys.items())}
        return json.dumps({"primary": self.primary, "keys": keys}, indent=2) + "\n"

    def with_key(self, key_id: str, key: bytes, *, primary: bool) -> KeyRing:
        return KeyRing(primary=key_id if primary else self.primary, keys={**self.keys, key_id: key})

    def without(self, key_id: str, primary: str) -> KeyRing:
        keys = {k: v for k, v in self.keys.items() if k != key_id}
        return KeyRing(primary=primary if primary in keys else self.primary, keys=keys)


def new_key_id() -> str:
    """A key id that sorts by creation date and does not collide: k20261129-3fa9c2."""
    return time.strftime("k%Y%m%d-", time.gmtime()) + secrets.token_hex(3)


def generate_keyring() -> str:
    """A new key ring as JSON with one random primary key (for `make run`'s var/keyring.json)."""
    key_id = new_key_id()
    return KeyRing(primary=key_id, keys={key_id: secrets.token_bytes(KEY_BYTES)}).to_json()


class KeyRingFile:
    """The key ring's file: re-read on demand, rewritten atomically when it is writable."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> KeyRing:
        """The file's key ring; KeyRingError names the problem (never the content)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyRingError(f"file {self.path} cannot be read: {exc.strerror}") from None
        if not text.strip():
            raise KeyRingError(f"file {self.path} is empty")
        return KeyRing.from_json(text)

    def write(self, ring: KeyRing) -> None:
        """Replaces the file (mode 0600) in one rename; OSError when it is read-only."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(ring.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def world_readable(self) -> bool:
        try:
            return bool(self.path.stat().st_mode & 0o004)
        except OSError:
            return False
