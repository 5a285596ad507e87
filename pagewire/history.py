"""Messages read back from the Conversations API, as the same events a webhook would give.

An imported message's event id is its `mid`, exactly the id the gateway gives the
webhook of that message (pagewire.normalize), so the router's log keeps whichever of
the two came first and drops the other: an import never doubles a message a webhook
stored, and a webhook arriving during an import never doubles one it found. The Page's
own messages come as echoes would (OUTBOUND, `is_echo`), so either copy stores the
same message.

Graph's message shape (`GET /{conversation-id}/messages`): `id`, `created_time`
(ISO 8601), `from {id, name | username}`, `to {data: [{id, …}]}`, `message` (text, ''
for an unsent one), `attachments {data: [{image_data{url} | video_data{url} | file_url,
name, mime_type}]}`, `sticker` (a URL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pagewire import contract
from pagewire.contract import MAX_NAME, MAX_USER_ID, Platform
from pagewire.normalize import graph_time_ms, id_str, raw_json, text_of
from pagewire.proto import events_pb2

HISTORY = events_pb2.ORIGIN_HISTORY
GAP_REPAIR = events_pb2.ORIGIN_GAP_REPAIR


def person_of(participants: Iterable[Mapping[str, Any]], page_id: str) -> tuple[str, str]:
    """The conversation's person (not the page): their id and name (Messenger) or
    username (Instagram); ('', '') when Graph named nobody else."""
    for participant in participants:
        user_id = id_str(participant.get("id"))
        if user_id and user_id != page_id and len(user_id) <= MAX_USER_ID:
            name = text_of(participant.get("name")) or text_of(participant.get("username"))
            return user_id, name[:MAX_NAME]
    return "", ""


def message_event(
    platform: Platform,
    page_id: str,
    item: Mapping[str, Any],
    *,
    origin: int,
    received_at_ms: int,
    user_id: str = "",
) -> events_pb2.Event | None:
    """One Graph message as a `message` event, or None when it names no id or time (such a
    message cannot be placed in its conversation, nor matched with its webhook).

    `user_id` is the conversation's person, used when the message's own `from`/`to`
    leave them out.
    """
    mid = id_str(item.get("id"))
    timestamp_ms = graph_time_ms(item.get("created_time"))
    if not mid or timestamp_ms is None:
        return None
    sender = _party(item.get("from"))
    if sender == page_id:
        direction = events_pb2.OUTBOUND
        recipients = item.get("to")
        people = recipients.get("data") if isinstance(recipients, Mapping) else None
        person = next((p for p in map(_party, people or ()) if p and p != page_id), "") or user_id
    else:
        direction, person = events_pb2.INBOUND, sender or user_id
    event = events_pb2.Event(
        id=mid,
        platform=platform.proto,  # type: ignore[arg-type]
        page_id=page_id,
        user_id=person if len(person) <= MAX_USER_ID else "",
        direction=direction,
        timestamp_ms=timestamp_ms,
        raw_json=raw_json(dict(item)),
        received_at_ms=received_at_ms,
        origin=origin,  # type: ignore[arg-type]
    )
    message = event.message
    message.mid = mid
    message.text = text_of(item.get("message"))
    message.is_echo = direction == events_pb2.OUTBOUND
    message.attachments.extend(_attachments(item))
    if contract.unstorable(event) is not None:
        return contract.demoted(event)
    return event


def marker_event(
    platform: Platform,
    page_id: str,
    conversation_id: str,
    user_id: str,
    user_name: str,
    *,
    messages: int,
    newest: Sequence[str],
    updated_time_ms: int,
    received_at_ms: int,
) -> events_pb2.Event:
    """The end of one conversation's import: applying it emits one HISTORY_IMPORTED.

    Its id digests the conversation and its newest message, so importing the same
    history again appends nothing (and tells consumers nothing new), while an import
    that found newer messages tells them once more.
    """
    digest = hashlib.sha256(
        "\x1f".join((platform.value, page_id, conversation_id, *newest)).encode()
    ).hexdigest()[:40]
    return events_pb2.Event(
        id=f"history:{digest}",
        platform=platform.proto,  # type: ignore[arg-type]
        page_id=page_id,
        user_id=user_id,
        direction=events_pb2.INBOUND,
        timestamp_ms=updated_time_ms,
        received_at_ms=received_at_ms,
        origin=HISTORY,
        history=events_pb2.HistoryEvent(
            conversation_id=conversation_id,
            messages=messages,
            user_name=user_name[:MAX_NAME],
            updated_time_ms=updated_time_ms,
        ),
    )


def _party(value: object) -> str:
    return id_str(value.get("id")) if isinstance(value, Mapping) else ""


def _attachments(item: Mapping[str, Any]) -> list[events_pb2.Attachment]:
    out = []
    attachments = item.get("attachments")
    data = attachments.get("data") if isinstance(attachments, Mapping) else None
    for attachment in data if isinstance(data, list) else ():
        if not isinstance(attachment, Mapping):
            continue
        kind, url = _media(attachment)
        out.append(
            events_pb2.Attachment(
                type=kind,
                url=url,
                title=text_of(attachment.get("name")),
                payload_json=raw_json(dict(attachment)),
            )
        )
    sticker = text_of(item.get("sticker"))
    if sticker:
        out.append(events_pb2.Attachment(type="sticker", url=sticker))
    return out


def _media(attachment: Mapping[str, Any]) -> tuple[str, str]:
    """(type, url) as a webhook would name them: image, video, or file."""
    for key, kind in (("image_data", "image"), ("video_data", "video")):
        data = attachment.get(key)
        if isinstance(data, Mapping) and text_of(data.get("url")):
            return kind, text_of(data.get("url"))
    mime = text_of(attachment.get("mime_type"))
    kind = "audio" if mime.startswith("audio/") else "file"
    return kind, text_of(attachment.get("file_url"))
