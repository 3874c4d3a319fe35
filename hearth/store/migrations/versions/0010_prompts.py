"""prompts + prompt_chunks (issue 23: prompts through the person's own CLI, sealed), and credential versions: version,
refreshed_at, status (active | needs_signin) with its reason, last_used_at

Revision ID: 0010_prompts
Revises: 0009_egress_ports
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_prompts"
down_revision = "0009_egress_ports"
branch_labels = None
depends_on = None


def credential_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False, server_default="active"),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    have = {c["name"] for c in insp.get_columns("credentials")}
    with op.batch_alter_table("credentials") as batch:
        for col in credential_columns():
            if col.name not in have:
                batch.add_column(col)
    if insp.has_table("prompts"):
        return  # a store create_all made from these models may already carry them
    op.create_table(
        "prompts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False, server_default="local"),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("permissions", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("conversation_id", sa.String(length=200), nullable=True),
        sa.Column("resumed_from", sa.String(length=200), nullable=True),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("step", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("answer_bytes", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        sa.Column("prompt_nonce", sa.LargeBinary(length=12), nullable=True),
        sa.Column("prompt_ct", sa.LargeBinary(), nullable=True),
        sa.Column("answer_nonce", sa.LargeBinary(length=12), nullable=True),
        sa.Column("answer_ct", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_prompts_user_status", "prompts", ["user_id", "status"])
    op.create_index("ix_prompts_status", "prompts", ["status"])
    op.create_table(
        "prompt_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("prompt_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("nonce", sa.LargeBinary(length=12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_prompt_chunks_prompt_id", "prompt_chunks", ["prompt_id"])


def downgrade() -> None:
    op.drop_table("prompt_chunks")
    op.drop_table("prompts")
    with op.batch_alter_table("credentials") as batch:
        for col in reversed(credential_columns()):
            batch.drop_column(col.name)
