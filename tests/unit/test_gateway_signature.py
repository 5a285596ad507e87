"""X-Hub-Signature-256 checks: raw bytes, constant-time compare, every fixture's signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from services.gateway.signature import is_valid, sign, signature_problem

SECRET = b"test_app_secret_0123456789abcdef"
BODY = b'{"object":"page","entry":[{"id":"1","messaging":[{"message":{"text":"\\u00e9"}}]}]}'


def signatures(fixtures: Path) -> list[dict[str, str]]:
    data = json.loads((fixtures / "meta" / "SIGNATURES.json").read_text())
    assert data["app_secret"] == SECRET.decode()
    return data["fixtures"]


def test_every_fixture_signature_verifies(fixtures_dir: Path) -> None:
    entries = signatures(fixtures_dir)
    assert len(entries) >= 15
    for entry in entries:
        raw = (fixtures_dir / "meta" / entry["file"]).read_bytes()
        assert sign(raw, SECRET) == entry["x_hub_signature_256_of_file_bytes"]
        assert is_valid(raw, entry["x_hub_signature_256_of_file_bytes"], SECRET)
        compact = entry["compact_body"].encode()
        assert is_valid(compact, entry["x_hub_signature_256_of_compact_body"], SECRET)
        # Each signature belongs to its own bytes only.
        assert not is_valid(compact, entry["x_hub_signature_256_of_file_bytes"], SECRET)


def test_reserialized_body_fails(fixtures_dir: Path) -> None:
    for entry in signatures(fixtures_dir):
        raw = (fixtures_dir / "meta" / entry["file"]).read_bytes()
        for reserialized in (
            json.dumps(json.loads(raw)).encode(),
            json.dumps(json.loads(raw), separators=(",", ":")).encode(),
            json.dumps(json.loads(raw), ensure_ascii=False).encode(),
        ):
            header = entry["x_hub_signature_256_of_file_bytes"]
            assert signature_problem(reserialized, header, SECRET) == "mismatch", entry["file"]


def test_valid_signature() -> None:
    header = "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == header
    assert signature_problem(BODY, header, SECRET) is None
    # Meta sends lowercase; case and surrounding spaces are not worth a rejection.
    assert signature_problem(BODY, "SHA256=" + header[7:].upper(), SECRET) is None
    assert signature_problem(BODY, f"  {header} ", SECRET) is None


def test_wrong_secret() -> None:
    header = sign(BODY, b"another_secret_0123456789abcdef0")
    assert signature_problem(BODY, header, SECRET) == "mismatch"


def test_one_changed_byte() -> None:
    header = sign(BODY, SECRET)
    assert signature_problem(BODY.replace(b'"1"', b'"2"'), header, SECRET) == "mismatch"
    assert signature_problem(BODY + b"\n", header, SECRET) == "mismatch"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing(header: str | None) -> None:
    assert signature_problem(BODY, header, SECRET) == "missing"
    assert not is_valid(BODY, header, SECRET)


def test_legacy_sha1_value_is_not_accepted() -> None:
    sha1 = "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()
    assert signature_problem(BODY, sha1, SECRET) == "not sha256"


@pytest.mark.parametrize(
    "header",
    [
        "sha256=",
        "sha256=abc",
        "sha256=" + "g" * 64,
        "sha256=" + "a" * 63,
        "sha256=" + "a" * 65,
        "sha256=" + "é" * 64,
        "sha256=" + "\u0660" * 64,  # Arabic-Indic digits: str.isdigit would accept them
    ],
)
def test_malformed(header: str) -> None:
    assert signature_problem(BODY, header, SECRET) == "malformed"


def test_bare_hex_without_prefix() -> None:
    bare = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert signature_problem(BODY, bare, SECRET) == "not sha256"
