"""Statements of the apply stage: read what a batch touches, write its plan, one statement
per table per batch.

Reads: the batch's conversations, locked (`FOR UPDATE` on PostgreSQL; SQLite has
one writer); the stored messages, receipt marks and edits of every mid it names.
Writes: messages, edits, marks, reactions, message updates, the status sweep,
conversations, the names history markers give contacts, and the feed — each a
single statement over the batch's rows. The same message insert serves inbound
messages, echoes, messages read back from Graph and the router's own sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.router.planner import (
    ConversationState,
    Key,
    Known,
    MidKey,
    Plan,
    StoredMessage,
)
from services.router.store import bulk

_CONVERSATION_COLUMNS = (
    "id, account_id, platform, page_id, user_id, fence, last_event_ms, message_count,"
    " delivery_watermark_ms, read_watermark_ms, thread_owner_app_id, thread_owner_ms,"
    " last_inbound_ms"
)
_KEY_COLUMNS = (("platform", "TEXT"), ("page_id", "TEXT"), ("user_id", "TEXT"))
_MID_COLUMNS = (("platform", "TEXT"), ("page_id", "TEXT"), ("mid", "TEXT"))


def _conversation(row: Any, created: bool = False) -> ConversationState:
    return ConversationState(
        id=row.id,
        account_id=row.account_id,
        platform=row.platform,
        page_id=row.page_id,
        user_id=row.user_id,
        fence=row.fence,
        last_event_ms=row.last_event_ms,
        message_count=row.message_count,
        delivery_watermark_ms=row.delivery_watermark_ms,
        read_watermark_ms=row.read_watermark_ms,
        thread_owner_app_id=row.thread_owner_app_id,
        thread_owner_ms=row.thread_owner_ms,
        last_inbound_ms=row.last_inbound_ms,
        created=created,
    )


def _keys(keys: Iterable[Key]) -> list[dict[str, str]]:
    return [{"platform": p, "page_id": g, "user_id": u} for p, g, u in keys]


async def lock_conversations(
    session: AsyncSession, keys: Sequence[Key]
) -> dict[Key, ConversationState]:
    """The stored conversations of `keys`, row-locked until commit."""
    if not keys:
        return {}
    lock = " FOR UPDATE OF c" if session.bind.dialect.name == "postgresql" else ""
    template = (
        f"SELECT {', '.join('c.' + c.strip() for c in _CONVERSATION_COLUMNS.split(','))}"
        " FROM conversations c JOIN {values} ON c.platform = v.platform"
        " AND c.page_id = v.page_id AND c.user_id = v.user_id" + lock
    )
    rows = await bulk.with_values(session, template, _KEY_COLUMNS, _keys(keys))
    return {(r.platform, r.page_id, r.user_id): _conversation(r) for r in rows}


async def create_conversations(
    session: AsyncSession, keys: Mapping[Key, str], now: int
) -> dict[Key, ConversationState]:
    """Contacts and conversations for `keys` (key → account), created; returns the new
    conversations (a key created meanwhile by someone else is not among them)."""
    if not keys:
        return {}
    await bulk.insert_ignoring(
        session,
        "contacts",
        [
            {
                "platform": p,
                "page_id": g,
                "user_id": u,
                "created_at_ms": now,
                "name": "",
                "first_name": "",
                "last_name": "",
                "username": "",
                "profile_pic": "",
                "profile_error": "",
                "profile_checked_at_ms": 0,
            }
            for p, g, u in keys
        ],
    )
    template = (
        "INSERT INTO conversations (account_id, platform, page_id, user_id, contact_id,"
        " created_at_ms, last_event_ms, message_count, delivery_watermark_ms,"
        " read_watermark_ms, fence, thread_owner_app_id, thread_owner_ms, last_inbound_ms)"
        " SELECT v.account_id, v.platform, v.page_id, v.user_id, k.id, :now, 0, 0, 0, 0, 0,"
        " '', 0, 0 FROM {values} JOIN contacts k ON k.platform = v.platform"
        " AND k.page_id = v.page_id AND k.user_id = v.user_id WHERE true"
        " ON CONFLICT (platform, page_id, user_id) DO NOTHING RETURNING " + _CONVERSATION_COLUMNS
    )
    rows = [
        {"platform": p, "page_id": g, "user_id": u, "account_id": account}
        for (p, g, u), account in keys.items()
    ]
    created = await bulk.with_values(
        session, template, (*_KEY_COLUMNS, ("account_id", "TEXT")), rows, {"now": now}
    )
    return {(r.platform, r.page_id, r.user_id): _conversation(r, created=True) for r in created}


async def known(session: AsyncSession, mids: Iterable[MidKey]) -> Known:
    """The stored messages, marks and edits of `mids`: three statements."""
    rows = [{"platform": p, "page_id": g, "mid": m} for p, g, m in mids]
    state = Known()
    if not rows:
        return state
    join = " JOIN {values} ON t.platform = v.platform AND t.page_id = v.page_id AND t.mid = v.mid"
    for r in await bulk.with_values(
        session,
        "SELECT t.platform, t.page_id, t.mid, t.id, t.conversation_id, t.direction,"
        " t.timestamp_ms, t.text, t.original_text, t.deleted FROM messages t" + join,
        _MID_COLUMNS,
        rows,
    ):
        state.messages[(r.platform, r.page_id, r.mid)] = StoredMessage(
            r.id,
            r.conversation_id,
            r.direction,
            r.timestamp_ms,
            r.text,
            r.original_text,
            bool(r.deleted),
        )
    for r in await bulk.with_values(
        session,
        "SELECT t.platform, t.page_id, t.mid, t.mark FROM message_marks t" + join,
        _MID_COLUMNS,
        rows,
    ):
        state.marks.setdefault((r.platform, r.page_id, r.mid), set()).add(r.mark)
    for r in await bulk.with_values(
        session,
        "SELECT t.platform, t.page_id, t.mid, t.num_edit, t.timestamp_ms, t.event_id, t.text"
        " FROM message_edits t" + join,
        _MID_COLUMNS,
        rows,
    ):
        state.edits.setdefault((r.platform, r.page_id, r.mid), []).append(
            (r.num_edit, r.timestamp_ms, r.event_id, r.text)
        )
    return state


async def insert_messages(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> dict[MidKey, int]:
    """Stores messages (planner.message_row shape); the ids of those that were new, by
    (platform, page, mid). The one writer of message rows."""
    inserted = await bulk.insert_ignoring(
        session, "messages", rows, returning=("platform", "page_id", "mid", "id")
    )
    return {(r[0], r[1], r[2]): r[3] for r in inserted}


_MESSAGE_UPDATE_COLUMNS = (
    ("id", "BIGINT"),
    ("text", "TEXT"),
    ("original_text", "TEXT"),
    ("deleted", "BOOLEAN"),
    ("clear_attachments", "BOOLEAN"),
)
_MESSAGE_UPDATE = (
    "UPDATE messages SET text = v.text, original_text = v.original_text, deleted = v.deleted,"
    " attachments_json = CASE WHEN v.clear_attachments THEN '[]' ELSE messages.attachments_json"
    " END FROM {values} WHERE messages.id = v.id"
)

_STATUS_COLUMNS = (("cid", "BIGINT"), ("delivered", "BIGINT"), ("seen", "BIGINT"))
# What the final watermarks and receipt marks say of each stored outgoing message of the
# swept conversations; only the rows that change are written and returned.
_NEW_STATUS = (
    "CASE WHEN m.timestamp_ms <= v.seen OR EXISTS (SELECT 1 FROM message_marks k"
    " WHERE k.platform = m.platform AND k.page_id = m.page_id AND k.mid = m.mid"
    " AND k.mark = 'read') THEN 'READ'"
    " WHEN m.status = 'SENT' AND (m.timestamp_ms <= v.delivered OR EXISTS (SELECT 1"
    " FROM message_marks k WHERE k.platform = m.platform AND k.page_id = m.page_id"
    " AND k.mid = m.mid AND k.mark = 'delivered')) THEN 'DELIVERED' ELSE m.status END"
)
_STATUS_SWEEP = (
    "UPDATE messages AS m SET status = " + _NEW_STATUS + " FROM {values}"
    " WHERE m.conversation_id = v.cid AND m.direction = 'OUTBOUND'"
    " AND m.status IN ('SENT', 'DELIVERED') AND " + _NEW_STATUS + " <> m.status"
    # Unqualified: SQLite's RETURNING knows no table alias.
    " RETURNING id, conversation_id"
)

_CONVERSATION_UPDATE_COLUMNS = (
    ("id", "BIGINT"),
    ("account_id", "TEXT"),
    ("fence", "BIGINT"),
    ("last_event_ms", "BIGINT"),
    ("added", "BIGINT"),
    ("delivery_watermark_ms", "BIGINT"),
    ("read_watermark_ms", "BIGINT"),
    ("thread_owner_app_id", "TEXT"),
    ("thread_owner_ms", "BIGINT"),
    ("last_inbound_ms", "BIGINT"),
)
_CONVERSATION_UPDATE = (
    "UPDATE conversations SET account_id = v.account_id, fence = v.fence,"
    " last_event_ms = v.last_event_ms, message_count = conversations.message_count + v.added,"
    " delivery_watermark_ms = v.delivery_watermark_ms, read_watermark_ms = v.read_watermark_ms,"
    " thread_owner_app_id = v.thread_owner_app_id, thread_owner_ms = v.thread_owner_ms,"
    " last_inbound_ms = v.last_inbound_ms FROM {values} WHERE conversations.id = v.id"
)

_REACTION = (
    "INSERT INTO reactions (platform, page_id, mid, user_id, action, reaction, emoji,"
    " timestamp_ms, event_id) SELECT v.platform, v.page_id, v.mid, v.user_id, v.action,"
    " v.reaction, v.emoji, v.timestamp_ms, v.event_id FROM {values} WHERE true"
    " ON CONFLICT (platform, page_id, mid, user_id) DO UPDATE SET action = excluded.action,"
    " reaction = excluded.reaction, emoji = excluded.emoji,"
    " timestamp_ms = excluded.timestamp_ms, event_id = excluded.event_id"
    " WHERE reactions.timestamp_ms < excluded.timestamp_ms OR (reactions.timestamp_ms ="
    " excluded.timestamp_ms AND reactions.event_id < excluded.event_id)"
)
_REACTION_COLUMNS = (
    ("platform", "TEXT"),
    ("page_id", "TEXT"),
    ("mid", "TEXT"),
    ("user_id", "TEXT"),
    ("action", "TEXT"),
    ("reaction", "TEXT"),
    ("emoji", "TEXT"),
    ("timestamp_ms", "BIGINT"),
    ("event_id", "TEXT"),
)
_CONTACT_NAME_COLUMNS = (*_KEY_COLUMNS, ("name", "TEXT"), ("username", "TEXT"))
# A history marker's name fills a contact's empty name (Messenger) or username
# (Instagram) and nothing else: what Graph's profile lookup stored stands, and the lookup,
# which runs after this commit, may still replace the marker's with the profile's.
_CONTACT_NAMES = (
    "UPDATE contacts SET"
    " name = CASE WHEN contacts.name = '' THEN v.name ELSE contacts.name END,"
    " username = CASE WHEN contacts.username = '' THEN v.username ELSE contacts.username END"
    " FROM {values} WHERE contacts.platform = v.platform AND contacts.page_id = v.page_id"
    " AND contacts.user_id = v.user_id AND ((v.name <> '' AND contacts.name = '')"
    " OR (v.username <> '' AND contacts.username = ''))"
)

_BLANK_EDITS = (
    "UPDATE message_edits SET text = '' FROM {values} WHERE message_edits.platform = v.platform"
    " AND message_edits.page_id = v.page_id AND message_edits.mid = v.mid"
)


async def write_plan(
    session: AsyncSession, plan: Plan, fence: int
) -> tuple[dict[MidKey, int], list[tuple[int, int]]]:
    """Writes everything the plan holds; returns the new messages' ids and the (message,
    conversation) pairs whose status changed. Call inside the batch's transaction."""
    new_ids = await insert_messages(session, list(plan.new_messages.values()))
    await bulk.insert_ignoring(session, "message_edits", plan.new_edits)
    if plan.blanked_edits:
        rows = [{"platform": p, "page_id": g, "mid": m} for p, g, m in plan.blanked_edits]
        await bulk.with_values(session, _BLANK_EDITS, _MID_COLUMNS, rows)
    await bulk.insert_ignoring(
        session,
        "message_marks",
        [{"platform": p, "page_id": g, "mid": m, "mark": k} for p, g, m, k in plan.new_marks],
    )
    if plan.reactions:
        await bulk.with_values(session, _REACTION, _REACTION_COLUMNS, list(plan.reactions.values()))
    if plan.message_updates:
        rows = [
            {
                "id": message_id,
                "text": columns["text"],
                "original_text": columns["original_text"],
                "deleted": columns["deleted"],
                "clear_attachments": "attachments_json" in columns,
            }
            for message_id, columns in plan.message_updates.items()
        ]
        await bulk.with_values(session, _MESSAGE_UPDATE, _MESSAGE_UPDATE_COLUMNS, rows)
    changed: list[tuple[int, int]] = []
    sweeps = [plan.conversations[c] for c in plan.status_sweeps if c in plan.conversations]
    if sweeps:
        rows = [
            {
                "cid": c.id,
                "delivered": c.delivery_watermark_ms,
                "seen": c.read_watermark_ms,
            }
            for c in sweeps
        ]
        changed = [
            (r[0], r[1])
            for r in await bulk.with_values(session, _STATUS_SWEEP, _STATUS_COLUMNS, rows)
        ]
    if plan.conversations:
        added: dict[int, int] = {}
        for key in new_ids:
            row = plan.new_messages[key]
            added[row["conversation_id"]] = added.get(row["conversation_id"], 0) + 1
        rows = [
            {
                "id": c.id,
                "account_id": c.account_id,
                "fence": fence,
                "last_event_ms": c.last_event_ms,
                "added": added.get(c.id, 0),
                "delivery_watermark_ms": c.delivery_watermark_ms,
                "read_watermark_ms": c.read_watermark_ms,
                "thread_owner_app_id": c.thread_owner_app_id,
                "thread_owner_ms": c.thread_owner_ms,
                "last_inbound_ms": c.last_inbound_ms,
            }
            for c in plan.conversations.values()
        ]
        await bulk.with_values(session, _CONVERSATION_UPDATE, _CONVERSATION_UPDATE_COLUMNS, rows)
    if plan.contact_names:
        await bulk.with_values(
            session, _CONTACT_NAMES, _CONTACT_NAME_COLUMNS, list(plan.contact_names.values())
        )
    return new_ids, changed
