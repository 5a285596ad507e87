"""What was sent against what is stored: lost, not applied, duplicated, equal to in-order.

Read straight from PostgreSQL, so the verdict does not depend on the code under test:
`drain` waits for the log to have no pending entry, `compare` is the verdict on a
workload's conversations, and `purge_residue` / `move_verdict` are those of the page
purged and the page moved under traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
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
    """The verdict of one scenario; `passed` when nothing was lost, left unapplied,
    doubled or different from its in-order twin."""
    expected = {key for conv in workload.conversations for key in _ids(conv)}
    lost: list[str] = []
    not_applied: list[str] = []
    duplicated: list[str] = []
    mismatched: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        states = {
            (page, event_id): state
            for page, event_id, state in conn.execute(
                "SELECT page_id, event_id, state FROM router.events"
                " WHERE platform = 'FACEBOOK' AND event_id = ANY(%s)",
                ([event_id for _, event_id in expected],),
            ).fetchall()
        }
        lost = sorted(event_id for _page, event_id in expected - set(states))
        not_applied = sorted(
            f"{key[1]}: {state}"
            for key, state in states.items()
            if key in expected and state != "applied"
        )
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
        "not_applied": len(not_applied),
        "duplicated": len(duplicated),
        "state_mismatches": len(mismatched),
        "examples": (lost[:3] + not_applied[:3] + duplicated[:3] + mismatched[:3]),
        "passed": not (lost or not_applied or duplicated or mismatched),
    }


def _ids(conv: Conversation) -> list[tuple[str, str]]:
    return [key for item in conv.items for key in event_ids(envelope([item]))]


async def log_counts(database_url: str) -> dict[str, int]:
    """Entries of the whole log by state (pending, applied, parked, failed)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        rows = await (
            await conn.execute("SELECT state, count(*) FROM router.events GROUP BY state")
        ).fetchall()
    counts = {"pending": 0, "applied": 0, "parked": 0, "failed": 0}
    counts.update({state: int(n) for state, n in rows})
    return counts


async def drain(database_url: str, timeout_s: float) -> dict[str, Any]:
    """Waits until no entry of the log is pending (every one applied, parked or failed),
    at most `timeout_s`; what the log holds then, and how long it took."""
    began = time.monotonic()
    while True:
        counts = await log_counts(database_url)
        if counts["pending"] == 0 or time.monotonic() - began > timeout_s:
            return {**counts, "drain_s": round(time.monotonic() - began, 2)}
        await asyncio.sleep(0.1)  # polling the log: the apply stage has no waitable signal


def applied_between(database_url: str, start_ms: int, end_ms: int) -> int:
    """Entries the apply stage applied in that window (wall-clock ms, as the router stamps)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM router.events WHERE state = 'applied'"
            " AND applied_at_ms BETWEEN %s AND %s",
            (start_ms, end_ms),
        ).fetchone()
    return int(row[0]) if row else 0


def purge_residue(database_url: str, page: str) -> dict[str, Any]:
    """What is stored for a purged page: its tombstone, the rows of every table that names
    the page (log entries only up to the tombstone), and its log entries after it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT purged_at_ms FROM router.purged_pages"
            " WHERE platform = 'FACEBOOK' AND page_id = %s",
            (page,),
        ).fetchone()
        tombstone = int(row[0]) if row else None
        rows: dict[str, int] = {}
        for table in ("messages", "conversations", "contacts", "message_edits", "reactions"):
            found = conn.execute(
                f"SELECT count(*) FROM router.{table} WHERE platform = 'FACEBOOK' AND page_id = %s",
                (page,),
            ).fetchone()
            rows[table] = int(found[0]) if found else 0
        found = conn.execute(
            "SELECT count(*) FROM router.message_marks WHERE platform = 'FACEBOOK'"
            " AND page_id = %s",
            (page,),
        ).fetchone()
        rows["message_marks"] = int(found[0]) if found else 0
        found = conn.execute(
            "SELECT count(*) FROM router.events WHERE platform = 'FACEBOOK' AND page_id = %s"
            " AND timestamp_ms <= %s",
            (page, tombstone if tombstone is not None else 2**62),
        ).fetchone()
        rows["events_up_to_tombstone"] = int(found[0]) if found else 0
        back = conn.execute(
            "SELECT event_id, timestamp_ms, state, stored_at_ms FROM router.events"
            " WHERE platform = 'FACEBOOK' AND page_id = %s AND timestamp_ms <= %s"
            " ORDER BY id LIMIT 5",
            (page, tombstone if tombstone is not None else 2**62),
        ).fetchall()
        later = dict(
            conn.execute(
                "SELECT state, count(*) FROM router.events WHERE platform = 'FACEBOOK'"
                " AND page_id = %s AND timestamp_ms > %s GROUP BY state",
                (page, tombstone if tombstone is not None else 2**62),
            ).fetchall()
        )
    return {
        "tombstone_ms": tombstone,
        "rows": rows,
        "events_after_tombstone": later,
        "came_back_examples": [
            {"event_id": e, "timestamp_ms": t, "state": st, "stored_at_ms": at}
            for e, t, st, at in back
        ],
    }


def move_verdict(
    database_url: str, page: str, account: str, moved_at_ms: int, users: Sequence[str]
) -> dict[str, Any]:
    """After a page moved to `account` at `moved_at_ms`: its conversations still in another
    account, and the feed changes about its conversations (those of `users`) committed
    since, in another account's feed and in the new one's."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        elsewhere = conn.execute(
            "SELECT account_id, count(*) FROM router.conversations WHERE platform = 'FACEBOOK'"
            " AND page_id = %s AND account_id <> %s GROUP BY account_id",
            (page, account),
        ).fetchall()
        changes = dict(
            conn.execute(
                "SELECT ch.account_id = %s, count(*) FROM router.changes ch"
                " JOIN router.conversations c ON c.id = ch.conversation_id"
                " WHERE c.platform = 'FACEBOOK' AND c.page_id = %s AND c.user_id = ANY(%s)"
                " AND ch.committed_at_ms >= %s GROUP BY 1",
                (account, page, list(users), moved_at_ms),
            ).fetchall()
        )
        before = conn.execute(
            "SELECT count(*) FROM router.changes ch"
            " JOIN router.conversations c ON c.id = ch.conversation_id"
            " WHERE c.platform = 'FACEBOOK' AND c.page_id = %s AND c.user_id = ANY(%s)"
            " AND ch.committed_at_ms < %s",
            (page, list(users), moved_at_ms),
        ).fetchone()
    return {
        "conversations_in_other_accounts": sum(int(n) for _, n in elsewhere),
        "changes_after_move_in_new_account": int(changes.get(True, 0)),
        "changes_after_move_in_other_accounts": int(changes.get(False, 0)),
        "changes_before_move": int(before[0]) if before else 0,
    }
