"""sessions.mode: how the person signs in (`remote_browser` — the sandbox's desktop — or `direct`, their own browser)

Revision ID: 0003_session_mode
Revises: 0002_locks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_session_mode"
down_revision = "0002_locks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("sessions")}
    if "mode" not in have:  # a store stamped at the baseline by `hearth db upgrade` may already carry it
        op.add_column(
            "sessions",
            sa.Column("mode", sa.String(length=16), nullable=False, server_default="remote_browser"),
        )


def downgrade() -> None:
    op.drop_column("sessions", "mode")
