"""locks: the `admission` row every create updates first, so limits, lease and insert are one serialized step

Revision ID: 0002_locks
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_locks"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    locks = op.create_table(
        "locks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(locks, [{"name": "admission", "generation": 0}, {"name": "health", "generation": 0}])


def downgrade() -> None:
    op.drop_table("locks")
