"""owner_kind on leases and sandboxes: who holds a lease or a sandbox row (session | cli | pool | reclaim) is a
column, no longer a prefix of the owner id (`cli-`, `pool-`, `reclaim-`). An existing store's rows are filled from
those prefixes (the ids keep them, so a downgrade only drops the column).

Revision ID: 0011_owner_kind
Revises: 0010_prompts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_owner_kind"
down_revision = "0010_prompts"
branch_labels = None
depends_on = None

KINDS = ("session", "cli", "pool", "reclaim")
PREFIXES = {  # table → (owner id column, {prefix: kind}) of the ids written before this revision
    "leases": ("session_id", {"cli-": "cli", "pool-": "pool", "reclaim-": "reclaim"}),
    "sandboxes": ("owner_id", {"cli-": "cli", "pool-": "pool"}),
}


def owner_kind() -> sa.Column[str]:
    kind = sa.Enum(*KINDS, name="owner_kind", native_enum=False, create_constraint=True, length=16)
    return sa.Column("owner_kind", kind, nullable=False, server_default="session")


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    for table, (id_column, prefixes) in PREFIXES.items():
        if "owner_kind" not in {c["name"] for c in insp.get_columns(table)}:
            with op.batch_alter_table(table) as batch:
                batch.add_column(owner_kind())
        t = sa.table(table, sa.column(id_column, sa.String()), sa.column("owner_kind", sa.String()))
        for prefix, kind in prefixes.items():
            op.execute(t.update().where(t.c[id_column].startswith(prefix, autoescape=True)).values(owner_kind=kind))


def downgrade() -> None:
    for table in PREFIXES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint("owner_kind", type_="check")  # SQLite's table copy would keep it otherwise
            batch.drop_column("owner_kind")
