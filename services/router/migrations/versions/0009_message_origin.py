"""Where each message came from: a webhook, the history import or gap repair. Every
message stored before this revision came from a webhook (or was the router's own send).

Revision ID: 0009_message_origin
Revises: 0008_page_versions
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_message_origin"
down_revision = "0008_page_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The server default fills the existing rows: no UPDATE over the whole table, and on
    # PostgreSQL 11+ no table rewrite either (a constant default is kept in the catalog).
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("origin", sa.String(16), nullable=False, server_default="webhook")
        )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("origin")
