"""Checks of request fields shared by several services; each failure names the field."""

from __future__ import annotations

import re

from pagewire.kit.errors import InvalidArgument
from pagewire.kit.settings import Secret
from pagewire.proto import events_pb2

_PAGE_ID = re.compile(r"[0-9]{1,32}")
_WHITESPACE = re.compile(r"\s")
MAX_TOKEN_CHARS = 4096
KNOWN_PLATFORMS = {events_pb2.FACEBOOK, events_pb2.INSTAGRAM}


def platform_and_page(platform: int, page_id: str, prefix: str = "") -> tuple[str, str]:
    """(platform name, page id): a known platform and a Page / Instagram account id (digits)."""
    if platform == events_pb2.PLATFORM_UNSPECIFIED:
        raise InvalidArgument(f"{prefix}platform", "must be FACEBOOK or INSTAGRAM")
    if platform not in KNOWN_PLATFORMS:
        raise InvalidArgument(f"{prefix}platform", f"unknown platform {platform}")
    if not page_id:
        raise InvalidArgument(f"{prefix}page_id", "is required")
    if not _PAGE_ID.fullmatch(page_id):
        raise InvalidArgument(f"{prefix}page_id", "must be 1 to 32 digits")
    return events_pb2.Platform.Name(platform), page_id


def page_token(token: str, field: str) -> Secret:
    """A page token, checked without ever putting it in a message."""
    if not token:
        raise InvalidArgument(field, "is required")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument(field, f"is longer than {MAX_TOKEN_CHARS} characters")
    if _WHITESPACE.search(token):
        raise InvalidArgument(field, "must not contain whitespace")
    return Secret(token)
