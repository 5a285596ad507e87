"""Page connections: one per (platform, page id), owned by one account.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "page_connections",
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("subscribed_fields", sa.Text(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.Column("last_error_code", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error_subcode", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("platform", "page_id", name="page_connections_pkey"),
        sa.CheckConstraint(
            "status IN ('SUBSCRIBED', 'SUBSCRIBE_FAILED', 'REAUTH_REQUIRED')",
            name="page_connections_status_check",
        ),
    )
    # ListPages by account, in the order it returns them.
    op.create_index(
        "page_connections_account_idx",
        "page_connections",
        ["account_id", "platform", "page_id"],
    )


def downgrade() -> None:
    op.drop_index("page_connections_account_idx", table_name="page_connections")
    op.drop_table("page_connections")
