"""A webhook body as a log may show it: ids, kinds and times kept, every other string redacted.

Customers' message text never appears in logs. When a body has to be logged (the
router refused it as a bug on our side), what helps find the bug is its shape,
its ids and its kinds; what a person wrote (text, titles, payloads, URLs, names)
is replaced by its length.
"""

from __future__ import annotations

import json

# Keys whose string values are ids, kinds or times, never what a person wrote. A list
# takes its key's rule (`mids`), and so does every key ending in `_id` or `_ids`.
_KEPT_KEYS = frozenset(
    {
        "id",
        "mid",
        "mids",
        "object",
        "field",
        "timestamp",
        "time",
        "created_time",
        "watermark",
        "action",
        "type",
        "verb",
        "item",
    }
)
_KEPT_SUFFIXES = ("_id", "_ids")
# Enough for the envelope and a few items; a log line of a whole 1 MiB body helps nobody.
MAX_LOGGED_CHARS = 8192


def redacted(value: object, key: str | None = None) -> object:
    """`value` with every string redacted unless it sits under a kept key (ids, kinds,
    times); numbers, booleans, null, keys and the structure stay as they are."""
    if isinstance(value, dict):
        return {k: redacted(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    if isinstance(value, str) and not _kept(key):
        return f"<redacted: {len(value)} chars>"
    return value


def redacted_json(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """`redacted(value)` as compact JSON, cut at `limit` characters (marked with "…")."""
    text = json.dumps(redacted(value), ensure_ascii=True, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _kept(key: str | None) -> bool:
    return key is not None and (key in _KEPT_KEYS or key.endswith(_KEPT_SUFFIXES))
