"""egress_ports: each user's port on the upstream egress proxy, for life (hearth/proxy/ports.py); unique per port, so
two users — on any node sharing the store — never share one

Revision ID: 0009_egress_ports
Revises: 0008_housekeeping_index
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_egress_ports"
down_revision = "0008_housekeeping_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("egress_ports"):
        return  # a store hearth 0.1's create_all made from these models may already carry it
    op.create_table(
        "egress_ports",
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
        sa.UniqueConstraint("port", name="uq_egress_ports_port"),
    )


def downgrade() -> None:
    op.drop_table("egress_ports")
