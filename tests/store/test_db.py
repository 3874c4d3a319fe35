"""A database created by an older hearth gains the columns added since (here `sessions.mode`) on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hearth.store.db import Database
from hearth.store.models import SessionRow

OLD_SESSIONS = (
    "create table sessions (id varchar(36) primary key, user_id varchar(200), provider varchar(64), "
    "status varchar(32), reason text, hop varchar(32), driver varchar(32), fabric varchar(64), slot integer, "
    "sandbox_ip varchar(45), pid integer, timings json, created_at datetime, updated_at datetime, "
    "last_seen_at datetime)"
)


def test_an_older_database_gets_the_mode_column_with_its_default(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    with sqlite3.connect(path) as conn:
        conn.execute(OLD_SESSIONS)
        conn.execute(
            "insert into sessions (id, user_id, status, driver, fabric, timings, created_at, updated_at, "
            "last_seen_at) values ('s1', 'u', 'completed', 'netns', 'hearth', '{}', '2026-01-01', '2026-01-01', "
            "'2026-01-01')"
        )
    db = Database(f"sqlite:///{path}")
    try:
        row = db.call(lambda s: s.get(SessionRow, "s1"))
        assert row is not None and row.mode == "remote_browser"
        Database(f"sqlite:///{path}").dispose()  # opening again changes nothing
        with sqlite3.connect(path) as conn:
            columns = [row[1] for row in conn.execute("pragma table_info(sessions)")]
        assert columns.count("mode") == 1
    finally:
        db.dispose()
