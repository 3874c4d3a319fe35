"""sessions.return_url: where the person goes back to when the sign-in ends (an origin of HEARTH_EMBED_ORIGINS)

Revision ID: 0006_session_return_url
Revises: 0005_nodes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_session_return_url"
down_revision = "0005_nodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("sessions")}
    if "return_url" not in have:  # a store hearth 0.1's create_all made from these models may already carry it
        op.add_column("sessions", sa.Column("return_url", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "return_url")
