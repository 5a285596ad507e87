"""Outbound: sends recorded before Graph is called, failures on the message, the window.

Revision ID: 0004_outbound
Revises: 0003_profiles
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_outbound"
down_revision = "0003_profiles"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(
            sa.Column("last_inbound_ms", sa.BigInteger, nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE conversations SET last_inbound_ms = COALESCE((SELECT max(e.timestamp_ms)"
        " FROM events e WHERE e.conversation_id = conversations.id"
        " AND e.direction = 'INBOUND' AND e.kind IN ('message', 'postback', 'reaction',"
        " 'referral', 'optin')), 0)"
    )
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("error_code", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("error_subcode", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("error_message", sa.Text, nullable=False, server_default=""))
        batch.add_column(
            sa.Column("idempotency_key", sa.String(128), nullable=False, server_default="")
        )
    op.create_table(
        "outbound_sends",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("conversation_id", BigId, sa.ForeignKey("conversations.id"), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("mids_json", sa.Text, nullable=False),
        sa.Column("messaging_type", sa.String(32), nullable=False),
        sa.Column("tag", sa.String(32), nullable=False),
        sa.Column("error_code", sa.Integer, nullable=False),
        sa.Column("error_subcode", sa.Integer, nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "idempotency_key", name="uq_outbound_key"),
    )


def downgrade() -> None:
    op.drop_table("outbound_sends")
    with op.batch_alter_table("messages") as batch:
        for column in ("idempotency_key", "error_message", "error_subcode", "error_code"):
            batch.drop_column(column)
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("last_inbound_ms")
