"""History imports: a page's import (window, cursor, counters, lease) and the
conversations it found, each with the cursor of its messages.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "history_imports",
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("page_id", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("days", sa.Integer, nullable=False),
        sa.Column("since_ms", sa.BigInteger, nullable=False),
        sa.Column("list_cursor", sa.Text, nullable=False, server_default=""),
        sa.Column("listed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("conversations_total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("conversations_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("messages_read", sa.Integer, nullable=False, server_default="0"),
        sa.Column("messages_stored", sa.Integer, nullable=False, server_default="0"),
        sa.Column("graph_calls", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("error_code", sa.Integer, nullable=False, server_default="0"),
        sa.Column("requested_at_ms", sa.BigInteger, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("finished_at_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=False, server_default=""),
        sa.Column("lease_until_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint(
            "state IN ('PENDING', 'RUNNING', 'DONE', 'FAILED')", name="history_imports_state_check"
        ),
    )
    op.create_index("history_imports_due_idx", "history_imports", ["state", "lease_until_ms"])
    op.create_table(
        "history_conversations",
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("page_id", sa.String(32), primary_key=True),
        sa.Column("conversation_id", sa.String(256), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("user_name", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_time_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cursor", sa.Text, nullable=False, server_default=""),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("messages_read", sa.Integer, nullable=False, server_default="0"),
        sa.Column("messages_stored", sa.Integer, nullable=False, server_default="0"),
        sa.Column("newest_mid", sa.Text, nullable=False, server_default=""),
    )
    op.create_index(
        "history_conversations_next_idx",
        "history_conversations",
        ["platform", "page_id", "done", "position"],
    )


def downgrade() -> None:
    op.drop_index("history_conversations_next_idx", table_name="history_conversations")
    op.drop_table("history_conversations")
    op.drop_index("history_imports_due_idx", table_name="history_imports")
    op.drop_table("history_imports")
