"""Self-describing envelopes, the vault's primary key id, retired keys, the audit log.

Existing tokens (nonce and ciphertext columns) are repacked into format-1
envelopes without decrypting — a migration never sees the key ring — so they
keep opening with their original associated data; the next rotation rewraps
them into format 2, which also binds the key id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_MAGIC = b"pw"
_LEGACY = 1
_NONCE_BYTES = 12
_BATCH = 500

_tokens = sa.table(
    "page_tokens",
    sa.column("platform", sa.String),
    sa.column("page_id", sa.String),
    sa.column("key_id", sa.String),
    sa.column("nonce", sa.LargeBinary),
    sa.column("ciphertext", sa.LargeBinary),
    sa.column("sealed", sa.LargeBinary),
    sa.column("format", sa.Integer),
)


def _pack_legacy(key_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
    encoded = key_id.encode("ascii")
    return _MAGIC + bytes([_LEGACY, len(encoded)]) + encoded + bytes(nonce) + bytes(ciphertext)


def upgrade() -> None:
    with op.batch_alter_table("page_tokens") as batch:
        batch.add_column(sa.Column("format", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("sealed", sa.LargeBinary(), nullable=True))

    bind = op.get_bind()
    rows = bind.execute(
        sa.select(
            _tokens.c.platform,
            _tokens.c.page_id,
            _tokens.c.key_id,
            _tokens.c.nonce,
            _tokens.c.ciphertext,
        )
    ).all()
    for start in range(0, len(rows), _BATCH):
        updates = []
        for row in rows[start : start + _BATCH]:
            if len(row.nonce) != _NONCE_BYTES:
                raise RuntimeError(
                    f"token of {row.platform} page {row.page_id} has a {len(row.nonce)}-byte"
                    " nonce; expected 12"
                )
            updates.append(
                {
                    "p": row.platform,
                    "g": row.page_id,
                    "sealed": _pack_legacy(row.key_id, row.nonce, row.ciphertext),
                }
            )
        bind.execute(
            _tokens.update()
            .where(_tokens.c.platform == sa.bindparam("p"), _tokens.c.page_id == sa.bindparam("g"))
            .values(sealed=sa.bindparam("sealed"), format=_LEGACY),
            updates,
        )

    with op.batch_alter_table("page_tokens") as batch:
        batch.alter_column("sealed", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("format", existing_type=sa.Integer(), server_default=None)
        batch.drop_column("nonce")
        batch.drop_column("ciphertext")

    op.create_table(
        "key_ring_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("primary_key_id", sa.String(64), nullable=True),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="key_ring_state_pkey"),
        sa.CheckConstraint("id = 1", name="key_ring_state_single_row"),
    )
    # The row exists from the start, so puts can lock it (a rotation then waits for them).
    op.execute(
        "INSERT INTO key_ring_state (id, primary_key_id, updated_at_ms, updated_by)"
        " VALUES (1, NULL, 0, 'migration')"
    )
    op.create_table(
        "retired_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("retired_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("retired_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name="retired_keys_pkey"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("caller", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False, server_default=""),
        sa.Column("page_id", sa.String(32), nullable=False, server_default=""),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False, server_default=""),
    )
    op.create_index("audit_log_page_idx", "audit_log", ["page_id", "id"])


def downgrade() -> None:
    """Back to nonce/ciphertext columns; only possible while every token is still format 1."""
    op.drop_index("audit_log_page_idx", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("retired_keys")
    op.drop_table("key_ring_state")
    bind = op.get_bind()
    newer = bind.execute(
        sa.select(sa.func.count()).select_from(_tokens).where(_tokens.c.format != _LEGACY)
    ).scalar_one()
    if newer:
        raise RuntimeError(
            f"{newer} tokens are in ciphertext format 2, which revision 0001 cannot hold;"
            " downgrading would lose them"
        )
    with op.batch_alter_table("page_tokens") as batch:
        batch.add_column(sa.Column("nonce", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("ciphertext", sa.LargeBinary(), nullable=True))
    rows = bind.execute(sa.select(_tokens.c.platform, _tokens.c.page_id, _tokens.c.sealed)).all()
    updates = []
    for row in rows:
        blob = bytes(row.sealed)
        start = 4 + blob[3]
        updates.append(
            {
                "p": row.platform,
                "g": row.page_id,
                "nonce": blob[start : start + _NONCE_BYTES],
                "ciphertext": blob[start + _NONCE_BYTES :],
            }
        )
    if updates:
        bind.execute(
            _tokens.update()
            .where(_tokens.c.platform == sa.bindparam("p"), _tokens.c.page_id == sa.bindparam("g"))
            .values(nonce=sa.bindparam("nonce"), ciphertext=sa.bindparam("ciphertext")),
            updates,
        )
    with op.batch_alter_table("page_tokens") as batch:
        batch.alter_column("nonce", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("ciphertext", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("sealed")
        batch.drop_column("format")
