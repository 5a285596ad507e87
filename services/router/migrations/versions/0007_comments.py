"""Comment threads, comments and their edits, post reactions, comment actions; the log's
re-normalize flag, set once for the `changes[]` items kept raw before comments existed.

Revision ID: 0007_comments
Revises: 0006_event_log
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_comments"
down_revision = "0006_event_log"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The fields whose items the router now folds into comment threads.
COMMENT_FIELDS = ("feed", "comments", "live_comments", "mentions")


def upgrade() -> None:
    op.create_table(
        "comment_threads",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("post_id", sa.String(512), nullable=False),
        sa.Column("media_product_type", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("last_activity_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("comment_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("fence", sa.BigInteger, nullable=False, server_default="0"),
        sa.UniqueConstraint("platform", "page_id", "post_id", name="uq_comment_threads_post"),
    )
    op.create_index(
        "ix_comment_threads_account_recent", "comment_threads", ["account_id", "last_activity_ms"]
    )
    text = {"nullable": False, "server_default": ""}
    number = {"nullable": False, "server_default": "0"}
    flag = {"nullable": False, "server_default": sa.false()}
    op.create_table(
        "comments",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("thread_id", BigId, sa.ForeignKey("comment_threads.id"), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("comment_id", sa.String(512), nullable=False),
        sa.Column("parent_id", sa.String(512), **text),
        sa.Column("author_id", sa.String(128), **text),
        sa.Column("author_name", sa.Text, **text),
        sa.Column("text", sa.Text, **text),
        sa.Column("original_text", sa.Text, **text),
        sa.Column("created_time_ms", sa.BigInteger, **number),
        sa.Column("edited_ms", sa.BigInteger, **number),
        sa.Column("edit_event_id", sa.String(512), **text),
        sa.Column("hidden", sa.Boolean, **flag),
        sa.Column("hidden_ms", sa.BigInteger, **number),
        sa.Column("hidden_event_id", sa.String(512), **text),
        sa.Column("removed", sa.Boolean, **flag),
        sa.Column("removed_ms", sa.BigInteger, **number),
        sa.Column("from_page", sa.Boolean, **flag),
        sa.Column("mention", sa.Boolean, **flag),
        sa.Column("seen_add", sa.Boolean, **flag),
        sa.Column("field", sa.String(64), **text),
        sa.Column("media_product_type", sa.String(64), **text),
        sa.Column("ad_id", sa.String(512), **text),
        sa.Column("ad_title", sa.Text, **text),
        sa.Column("attachment_url", sa.Text, **text),
        sa.Column("sent_by", sa.String(128), **text),
        sa.Column("stored_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "comment_id", name="uq_comments_comment"),
    )
    op.create_index("ix_comments_thread", "comments", ["thread_id", "created_time_ms"])
    op.create_index("ix_comments_author", "comments", ["platform", "page_id", "author_id"])
    op.create_table(
        "comment_edits",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("comment_id", sa.String(512), nullable=False),
        sa.Column("event_id", sa.String(512), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("platform", "page_id", "event_id", name="uq_comment_edits_event"),
    )
    op.create_index(
        "ix_comment_edits_comment", "comment_edits", ["platform", "page_id", "comment_id"]
    )
    op.create_table(
        "post_reactions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("post_id", sa.String(512), nullable=False),
        sa.Column("comment_id", sa.String(512), **text),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("user_name", sa.Text, **text),
        sa.Column("reaction_type", sa.String(32), nullable=False),
        sa.Column("verb", sa.String(16), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(512), nullable=False),
        sa.UniqueConstraint(
            "platform", "page_id", "post_id", "comment_id", "user_id", name="uq_post_reactions"
        ),
    )
    op.create_table(
        "comment_actions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("page_id", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("comment_id", sa.String(512), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result_id", sa.String(512), **text),
        sa.Column("error_code", sa.Integer, **number),
        sa.Column("error_subcode", sa.Integer, **number),
        sa.Column("error_message", sa.Text, **text),
        sa.Column("sent_by", sa.String(128), **text),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
            "platform", "page_id", "idempotency_key", name="uq_comment_actions_key"
        ),
    )
    op.create_index(
        "ix_comment_actions_comment",
        "comment_actions",
        ["platform", "page_id", "comment_id", "action"],
    )
    with op.batch_alter_table("changes") as batch:
        batch.add_column(
            sa.Column(
                "comment_row_id",
                BigId,
                sa.ForeignKey("comments.id", name="fk_changes_comment_row"),
                nullable=True,
            )
        )
        batch.add_column(
            sa.Column(
                "thread_id",
                BigId,
                sa.ForeignKey("comment_threads.id", name="fk_changes_thread"),
                nullable=True,
            )
        )
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("renormalize", sa.Boolean, **flag))
    # Items kept raw before the router knew comments: normalized again, and applied, by the
    # apply stage once this version runs (`pagewire events reprocess` does the same on ask).
    fields = ", ".join(f"'{f}'" for f in COMMENT_FIELDS)
    op.execute(
        "UPDATE events SET renormalize = true, state = 'pending', lease_until_ms = 0"
        f" WHERE kind IN ({fields}) AND state IN ('applied', 'failed')"
    )
    op.execute(
        f"UPDATE events SET renormalize = true WHERE kind IN ({fields}) AND state = 'parked'"
    )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("renormalize")
    with op.batch_alter_table("changes") as batch:
        batch.drop_column("thread_id")
        batch.drop_column("comment_row_id")
    op.execute("DELETE FROM changes WHERE kind LIKE 'COMMENT%' OR kind = 'POST_REACTION_CHANGED'")
    for table in ("comment_actions", "post_reactions", "comment_edits", "comments"):
        op.drop_table(table)
    op.drop_table("comment_threads")
