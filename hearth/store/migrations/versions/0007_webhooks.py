"""webhook_outbox: session and credential state changes waiting to be sent to HEARTH_WEBHOOK_URL (hearth/webhooks)

Revision ID: 0007_webhooks
Revises: 0006_session_return_url
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_webhooks"
down_revision = "0006_session_return_url"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("webhook_outbox"):
        return  # a store hearth 0.1's create_all made from these models may already carry it
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("msg_id", sa.String(length=40), nullable=False),
        sa.Column("stream", sa.String(length=240), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=120), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("msg_id"),
    )
    op.create_index("ix_webhook_outbox_due", "webhook_outbox", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_outbox_stream", "webhook_outbox", ["stream", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_outbox_stream", table_name="webhook_outbox")
    op.drop_index("ix_webhook_outbox_due", table_name="webhook_outbox")
    op.drop_table("webhook_outbox")
