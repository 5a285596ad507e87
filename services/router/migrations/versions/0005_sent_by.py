"""Every send records the identity that asked for it, on the send and on its messages.

Revision ID: 0005_sent_by
Revises: 0004_outbound
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_sent_by"
down_revision = "0004_outbound"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("outbound_sends", "messages"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("sent_by", sa.String(128), nullable=False, server_default="")
            )


def downgrade() -> None:
    for table in ("outbound_sends", "messages"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("sent_by")
