"""Notices for the router (a page's account, or that it was disconnected), written with
the change and retried until the router has taken them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "router_notices",
        sa.Column("platform", sa.String(16), primary_key=True),
        sa.Column("page_id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("delivered_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_at_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("router_notices_due_idx", "router_notices", ["next_at_ms"])
    # Pages connected before: the router learned them (RouteParked, or asking GetPage);
    # numbering starts at 1 with their current account, already delivered.
    op.execute(
        "INSERT INTO router_notices (platform, page_id, account_id, version,"
        " delivered_version, attempts, next_at_ms, last_error)"
        " SELECT platform, page_id, account_id, 1, 1, 0, 0, '' FROM page_connections"
    )


def downgrade() -> None:
    op.drop_index("router_notices_due_idx", table_name="router_notices")
    op.drop_table("router_notices")
