"""A store made before sign-in modes (schema 0002) gains `sessions.mode` by `hearth db upgrade`, rows kept."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from hearth.config import Settings
from hearth.errors import SchemaError
from hearth.store import schema
from hearth.store.db import Database
from hearth.store.models import SessionRow


def test_an_older_store_gets_the_mode_column_with_its_default(make_settings: Callable[..., Settings]) -> None:
    url = make_settings().db_url
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), "0002_locks")
        conn.execute(
            text(
                "insert into sessions (id, user_id, status, driver, fabric, timings, created_at, updated_at, "
                "last_seen_at) values ('s1', 'u', 'completed', 'netns', 'hearth', '{}', '2026-01-01', "
                "'2026-01-01', '2026-01-01')"
            )
        )
    with pytest.raises(SchemaError, match="hearth db upgrade"):
        Database(url)
    assert schema.upgrade(engine) == ("0002_locks", schema.head())
    engine.dispose()
    db = Database(url)
    try:
        row = db.call(lambda s: s.get(SessionRow, "s1"))
        assert row is not None and row.mode == "remote_browser"
    finally:
        db.dispose()
