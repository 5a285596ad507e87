"""Meta's webhook signature: HMAC-SHA256 of the raw request bytes, keyed with the app secret."""

from __future__ import annotations

import hashlib
import hmac
import re

SIGNATURE_HEADER = "X-Hub-Signature-256"
# The SHA-1 header older Meta docs describe; never accepted on its own (SHA-1 HMACs are
# weaker and Meta documents only the SHA-256 header today), only named in the log.
LEGACY_SIGNATURE_HEADER = "X-Hub-Signature"

_PREFIX = "sha256="
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def sign(body: bytes, secret: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta would send for `body` (tests and the CLI use it)."""
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_problem(body: bytes, header: str | None, secret: bytes) -> str | None:
    """None when `header` signs `body` under `secret`, else a short reason for the log.

    The HMAC is computed over the bytes exactly as received: Meta signs its own
    escaped serialization, so re-encoding a parsed body would change the digest.
    """
    if header is None or not header.strip():
        return "missing"
    value = header.strip()
    if value[: len(_PREFIX)].lower() != _PREFIX:
        return "not sha256"
    given = value[len(_PREFIX) :].lower()
    # Checking the shape first keeps compare_digest on plain ASCII of equal length.
    if not _HEX_DIGEST.fullmatch(given):
        return "malformed"
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("ascii")):
        return "mismatch"
    return None


def is_valid(body: bytes, header: str | None, secret: bytes) -> bool:
    """True when `header` is a correct SHA-256 signature of `body`."""
    return signature_problem(body, header, secret) is None
