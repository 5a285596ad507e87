"""Reconcile results per page: when it was last checked, how often it was repaired.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("page_connections") as batch:
        batch.add_column(
            sa.Column("last_checked_at_ms", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("repairs", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_repair", sa.Text(), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("last_repair_at_ms", sa.BigInteger(), nullable=False, server_default="0")
        )
    # The reconcile loop claims the pages checked longest ago.
    op.create_index("page_connections_checked_idx", "page_connections", ["last_checked_at_ms"])


def downgrade() -> None:
    op.drop_index("page_connections_checked_idx", table_name="page_connections")
    with op.batch_alter_table("page_connections") as batch:
        for column in ("last_repair_at_ms", "last_repair", "repairs", "last_checked_at_ms"):
            batch.drop_column(column)
