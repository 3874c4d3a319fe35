"""Alembic environment: migrations run on the connection hearth hands in (`hearth.store.schema`), never on a URL
read from a file."""

from __future__ import annotations

from alembic import context

from hearth.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
