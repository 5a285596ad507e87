"""Page tokens, sealed with AES-256-GCM, one per (platform, page id).

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
        "page_tokens",
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("graph_code", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("graph_subcode", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("platform", "page_id", name="page_tokens_pkey"),
        sa.CheckConstraint(
            "status IN ('ACTIVE', 'REAUTH_REQUIRED')", name="page_tokens_status_check"
        ),
    )
    # Key rotation rewraps by key id; this finds the rows still on an old key.
    op.create_index("page_tokens_key_id_idx", "page_tokens", ["key_id"])


def downgrade() -> None:
    op.drop_index("page_tokens_key_id_idx", table_name="page_tokens")
    op.drop_table("page_tokens")
