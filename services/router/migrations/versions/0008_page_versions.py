"""The router's page table keeps disconnected pages too (account '') and the version of
subscriptions' notice it last took, so a late or retried notice cannot undo a newer one.

Revision ID: 0008_page_versions
Revises: 0007_comments
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_page_versions"
down_revision = "0007_comments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pages") as batch:
        batch.add_column(sa.Column("version", sa.BigInteger, nullable=False, server_default="0"))
    # A purged page had its row deleted; it stays now, as not connected, so no replica
    # learns it again from a directory answer it cached before the purge.
    op.execute(
        "INSERT INTO pages (platform, page_id, account_id, updated_at_ms, version)"
        " SELECT platform, page_id, '', purged_at_ms, 0 FROM purged_pages p"
        " WHERE NOT EXISTS (SELECT 1 FROM pages g"
        " WHERE g.platform = p.platform AND g.page_id = p.page_id)"
    )


def downgrade() -> None:
    op.execute("DELETE FROM pages WHERE account_id = ''")
    with op.batch_alter_table("pages") as batch:
        batch.drop_column("version")
