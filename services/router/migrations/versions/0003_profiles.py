"""Contact profiles fetched from Graph after commit.

Revision ID: 0003_profiles
Revises: 0002_convergence
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_profiles"
down_revision = "0002_convergence"
branch_labels = None
depends_on = None

_COLUMNS = ("name", "first_name", "last_name", "username", "profile_pic", "profile_error")


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        for column in _COLUMNS:
            batch.add_column(sa.Column(column, sa.Text, nullable=False, server_default=""))
        batch.add_column(
            sa.Column("profile_checked_at_ms", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        for column in ("profile_checked_at_ms", *reversed(_COLUMNS)):
            batch.drop_column(column)
