"""sandboxes: one row per live sandbox (slot, launcher pid + start time, sealed agent secret) so that a restarted
controller adopts the sandboxes that outlived the previous one

Revision ID: 0004_sandboxes
Revises: 0003_session_mode
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_sandboxes"
down_revision = "0003_session_mode"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("sandboxes"):  # a store made by create_all already has it
        return
    op.create_table(
        "sandboxes",
        sa.Column("owner_id", sa.String(length=64), primary_key=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("fabric", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("driver", sa.String(length=32), nullable=False),
        sa.Column("desktop", sa.Boolean(), nullable=False),
        sa.Column("home", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_start", sa.BigInteger(), nullable=True),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("nonce", sa.LargeBinary(length=12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sandboxes")
