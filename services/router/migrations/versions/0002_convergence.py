"""Every event kind, convergence, fencing and the change feed.

Message kinds, edits, reactions and receipt marks that may arrive before their
message; the conversation's fence and thread owner; the lock fence source;
per-account change cursors.

Revision ID: 0002_convergence
Revises: 0001_router
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_convergence"
down_revision = "0001_router"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="message"))
        batch.add_column(sa.Column("payload", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("original_text", sa.Text, nullable=False, server_default=""))
        batch.add_column(
            sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("is_unsupported", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("reply_to_story_url", sa.Text, nullable=False, server_default="")
        )
        batch.add_column(sa.Column("referral_json", sa.Text, nullable=False, server_default=""))
    op.execute("UPDATE messages SET original_text = text")
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("fence", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("thread_owner_app_id", sa.String(64), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("thread_owner_ms", sa.BigInteger, nullable=False, server_default="0")
        )
    op.create_table(
        "message_edits",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("mid", sa.String(512), nullable=False),
        sa.Column("event_id", sa.String(512), nullable=False),
        sa.Column("num_edit", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "event_id", name="uq_message_edits_event"),
    )
    op.create_index("ix_message_edits_mid", "message_edits", ["platform", "page_id", "mid"])
    op.create_table(
        "reactions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("mid", sa.String(512), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reaction", sa.String(32), nullable=False),
        sa.Column("emoji", sa.String(64), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(512), nullable=False),
        sa.UniqueConstraint("platform", "page_id", "mid", "user_id", name="uq_reactions_person"),
    )
    op.create_table(
        "message_marks",
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("page_id", sa.String(128), primary_key=True),
        sa.Column("mid", sa.String(512), primary_key=True),
        sa.Column("mark", sa.String(16), primary_key=True),
    )
    op.create_table(
        "account_cursors",
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("last_cursor", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "changes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("conversation_id", BigId, sa.ForeignKey("conversations.id"), nullable=True),
        sa.Column("message_id", BigId, sa.ForeignKey("messages.id"), nullable=True),
        sa.Column("event_row_id", BigId, sa.ForeignKey("events.id"), nullable=True),
        sa.Column("committed_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("account_id", "cursor", name="uq_changes_cursor"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Fences must survive a Redis restart; a sequence is cheap and never goes back.
        op.execute("CREATE SEQUENCE lock_fence_seq")
    else:
        op.create_table("lock_fences", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE lock_fence_seq")
    else:
        op.drop_table("lock_fences")
    for table in ("changes", "account_cursors", "message_marks", "reactions", "message_edits"):
        op.drop_table(table)
    with op.batch_alter_table("conversations") as batch:
        for column in ("thread_owner_ms", "thread_owner_app_id", "fence"):
            batch.drop_column(column)
    with op.batch_alter_table("messages") as batch:
        for column in (
            "referral_json",
            "reply_to_story_url",
            "is_unsupported",
            "deleted",
            "original_text",
            "payload",
            "kind",
        ):
            batch.drop_column(column)
