"""sessions (node_id, status): the housekeeping queries (expiry, the watchdog, the reconciler) read one node's
active sessions in one indexed statement per tick, whatever the number of ended rows beside them

Revision ID: 0008_housekeeping_index
Revises: 0007_webhooks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_housekeeping_index"
down_revision = "0007_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("sessions")}
    if "ix_sessions_node_status" not in have:
        op.create_index("ix_sessions_node_status", "sessions", ["node_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_sessions_node_status", table_name="sessions")
