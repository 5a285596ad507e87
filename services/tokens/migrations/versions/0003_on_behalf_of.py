"""The audit log names whom a decrypt was for: the reader or sender whose call caused it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "audit_log",
        sa.Column("on_behalf_of", sa.String(128), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("audit_log", "on_behalf_of")
