"""nodes: one row per `hearth node`; sessions, leases, sandboxes and CLI sandboxes carry the node they live on, and lease
slots/addresses are unique per node (each host's fabric is its own address space)

Revision ID: 0005_nodes
Revises: 0004_sandboxes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_nodes"
down_revision = "0004_sandboxes"
branch_labels = None
depends_on = None


def _node_id() -> sa.Column[str]:
    return sa.Column("node_id", sa.String(length=64), nullable=False, server_default="local")


def upgrade() -> None:
    inspect = sa.inspect(op.get_bind())
    if not inspect.has_table("nodes"):
        op.create_table(
            "nodes",
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("address", sa.String(length=255), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("capacity", sa.Integer(), nullable=False),
            sa.Column("free_slots", sa.Integer(), nullable=False),
            sa.Column("drivers", sa.JSON(), nullable=False),
            sa.Column("version", sa.String(length=32), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )

    def has(table: str) -> bool:  # a store stamped at the baseline by `hearth db upgrade` may already carry it
        return "node_id" in {c["name"] for c in inspect.get_columns(table)}

    if not has("sessions"):
        with op.batch_alter_table("sessions") as t:
            t.add_column(_node_id())
            t.create_index("ix_sessions_node_id", ["node_id"])
    if not has("sandboxes"):
        with op.batch_alter_table("sandboxes") as t:
            t.add_column(_node_id())
    if not has("cli_sandboxes"):
        with op.batch_alter_table("cli_sandboxes") as t:
            t.add_column(_node_id())
    if not has("leases"):
        with op.batch_alter_table("leases") as t:
            t.add_column(_node_id())
            t.drop_constraint("uq_lease_slot", type_="unique")
            t.drop_constraint("uq_lease_ip", type_="unique")
            t.create_unique_constraint("uq_lease_slot", ["node_id", "fabric", "slot"])
            t.create_unique_constraint("uq_lease_ip", ["node_id", "fabric", "ip"])


def downgrade() -> None:
    with op.batch_alter_table("leases") as t:
        t.drop_constraint("uq_lease_slot", type_="unique")
        t.drop_constraint("uq_lease_ip", type_="unique")
        t.create_unique_constraint("uq_lease_slot", ["fabric", "slot"])
        t.create_unique_constraint("uq_lease_ip", ["fabric", "ip"])
        t.drop_column("node_id")
    with op.batch_alter_table("cli_sandboxes") as t:
        t.drop_column("node_id")
    with op.batch_alter_table("sandboxes") as t:
        t.drop_column("node_id")
    with op.batch_alter_table("sessions") as t:
        t.drop_index("ix_sessions_node_id")
        t.drop_column("node_id")
    op.drop_table("nodes")
