"""What was sent against what is stored: lost, duplicated, and equal to in-order delivery.

Read straight from PostgreSQL, so the verdict does not depend on the code under test.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tests.chaos.meta import Conversation, Workload, envelope, event_ids


def _state(conn: psycopg.Connection, conv: Conversation) -> dict[str, Any]:
    """One conversation as a reader sees it, with the user id replaced by `U`."""
    row = conn.execute(
        "SELECT id, message_count, last_event_ms, delivery_watermark_ms, read_watermark_ms,"
        " thread_owner_app_id FROM router.conversations"
        " WHERE platform = 'FACEBOOK' AND page_id = %s AND user_id = %s",
        (conv.page, conv.user),
    ).fetchall()
    if len(row) != 1:
        return {"conversations": len(row)}
    conversation_id, *summary = row[0]
    messages = conn.execute(
        "SELECT mid, direction, text, status, is_echo, kind, deleted, original_text,"
        " timestamp_ms FROM router.messages WHERE conversation_id = %s"
        " ORDER BY timestamp_ms, mid",
        (conversation_id,),
    ).fetchall()
    prefix = f"m_{conv.user}_%"
    edits = conn.execute(
        "SELECT mid, num_edit, text, timestamp_ms FROM router.message_edits"
        " WHERE page_id = %s AND mid LIKE %s ORDER BY mid, num_edit, timestamp_ms",
        (conv.page, prefix),
    ).fetchall()
    reactions = conn.execute(
        "SELECT mid, action, reaction, emoji, timestamp_ms FROM router.reactions"
        " WHERE page_id = %s AND mid LIKE %s ORDER BY mid, user_id",
        (conv.page, prefix),
    ).fetchall()
    created = conn.execute(
        "SELECT count(*) FROM router.changes"
        " WHERE conversation_id = %s AND kind = 'MESSAGE_CREATED'",
        (conversation_id,),
    ).fetchone()
    events = conn.execute(
        "SELECT count(*) FROM router.events WHERE conversation_id = %s", (conversation_id,)
    ).fetchone()
    state = {
        "conversations": 1,
        "summary": summary,
        "messages": messages,
        "edits": edits,
        "reactions": reactions,
        "message_created_changes": created[0] if created else 0,
        "event_rows": events[0] if events else 0,
    }
    return _factor_out(state, conv.user)


def _factor_out(value: Any, user: str) -> Any:
    if isinstance(value, str):
        return value.replace(user, "U")
    if isinstance(value, list | tuple):
        return [_factor_out(v, user) for v in value]
    if isinstance(value, dict):
        return {k: _factor_out(v, user) for k, v in value.items()}
    return value


def compare(database_url: str, workload: Workload) -> dict[str, Any]:
    """The verdict of one scenario; `passed` when nothing was lost, doubled or different."""
    expected = {key for conv in workload.conversations for key in _ids(conv)}
    lost: list[str] = []
    duplicated: list[str] = []
    mismatched: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = {
            (page, event_id)
            for page, event_id in conn.execute(
                "SELECT page_id, event_id FROM router.events WHERE event_id = ANY(%s)",
                ([event_id for _, event_id in expected],),
            ).fetchall()
        }
        lost = sorted(event_id for page, event_id in expected - stored)
        for conv, twin in zip(workload.conversations, workload.references, strict=True):
            state, reference = _state(conn, conv), _state(conn, twin)
            if state.get("conversations") != 1:
                duplicated.append(f"{conv.user}: {state.get('conversations')} conversations")
                continue
            messages = len(state["messages"])
            if not (
                messages == conv.messages == state["summary"][0] == state["message_created_changes"]
            ):
                duplicated.append(
                    f"{conv.user}: {messages} messages stored, {conv.messages} sent,"
                    f" count {state['summary'][0]},"
                    f" {state['message_created_changes']} MESSAGE_CREATED changes"
                )
            if state["event_rows"] != len(set(_ids(conv))):
                duplicated.append(
                    f"{conv.user}: {state['event_rows']} event rows for"
                    f" {len(set(_ids(conv)))} distinct events"
                )
            if state != reference:
                diff = [k for k in state if state[k] != reference.get(k)]
                mismatched.append(f"{conv.user}: differs from in-order delivery in {diff}")
    return {
        "events_distinct": len(expected),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "state_mismatches": len(mismatched),
        "examples": (lost[:3] + duplicated[:3] + mismatched[:3]),
        "passed": not (lost or duplicated or mismatched),
    }


def _ids(conv: Conversation) -> list[tuple[str, str]]:
    return [key for item in conv.items for key in event_ids(envelope([item]))]
