"""Router tables: contacts, conversations, messages, the event log, parked events.

Revision ID: 0001_router
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_router"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "user_id", name="uq_contacts_key"),
    )
    op.create_table(
        "conversations",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("contact_id", BigId, sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("last_event_ms", sa.BigInteger, nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False),
        sa.Column("delivery_watermark_ms", sa.BigInteger, nullable=False),
        sa.Column("read_watermark_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "user_id", name="uq_conversations_key"),
    )
    op.create_index(
        "ix_conversations_account_recent", "conversations", ["account_id", "last_event_ms"]
    )
    op.create_index("ix_conversations_page_recent", "conversations", ["page_id", "last_event_ms"])
    op.create_table(
        "messages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", BigId, sa.ForeignKey("conversations.id"), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("mid", sa.String(512), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("attachments_json", sa.Text, nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        sa.Column("is_echo", sa.Boolean, nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("quick_reply_payload", sa.Text, nullable=False),
        sa.Column("reply_to_mid", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("standby", sa.Boolean, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "mid", name="uq_messages_mid"),
    )
    op.create_index("ix_messages_order", "messages", ["conversation_id", "timestamp_ms", "id"])
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        sa.Column("conversation_id", BigId, sa.ForeignKey("conversations.id"), nullable=True),
        sa.Column("standby", sa.Boolean, nullable=False),
        sa.Column("raw_json", sa.Text, nullable=False),
        sa.Column("received_at_ms", sa.BigInteger, nullable=False),
        sa.Column("stored_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "event_id", name="uq_events_event_id"),
    )
    op.create_index("ix_events_conversation", "events", ["conversation_id", "timestamp_ms"])
    op.create_table(
        "parked_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("event", sa.LargeBinary, nullable=False),
        sa.Column("raw_json", sa.Text, nullable=False),
        sa.Column("received_at_ms", sa.BigInteger, nullable=False),
        sa.Column("parked_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "event_id", name="uq_parked_event_id"),
    )
    op.create_index("ix_parked_page", "parked_events", ["platform", "page_id", "id"])


def downgrade() -> None:
    for table in ("parked_events", "events", "messages", "conversations", "contacts"):
        op.drop_table(table)
