"""How the CLI prints protos: plain dicts for --json, aligned columns for people."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def to_dict(message: Message) -> dict[str, Any]:
    """Every field (defaults included), enums by name, 64-bit integers as JSON numbers."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            out[field.name] = [_scalar(field, item) for item in value]
        else:
            out[field.name] = _scalar(field, value)
    return out


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_dict(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return (
            field.enum_type.values_by_number[value].name
            if value in field.enum_type.values_by_number
            else value
        )
    return value


def iso(ms: int) -> str:
    """Milliseconds since the epoch as UTC ISO-8601 (empty for 0)."""
    if not ms:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def dump_json(items: Sequence[Message] | Message) -> str:
    if isinstance(items, Message):
        return json.dumps(to_dict(items), ensure_ascii=False, indent=2)
    return json.dumps([to_dict(m) for m in items], ensure_ascii=False, indent=2)


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns; long cells are cut so a row fits a terminal line."""
    cells = [[str(c) if len(str(c)) <= 60 else str(c)[:57] + "..." for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)
