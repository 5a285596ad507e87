"""Whether replies on a page may use the HUMAN_AGENT tag.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("page_connections") as batch:
        batch.add_column(
            sa.Column("human_agent", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("page_connections") as batch:
        batch.drop_column("human_agent")
