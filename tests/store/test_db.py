"""The SQLite state file is the controller's alone: 0600, also when it existed with looser permissions."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import text

from hearth.store.db import Database


def test_database_file_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    db = Database(f"sqlite:///{path}")
    db.call(lambda s: s.execute(text("CREATE TABLE t (x INTEGER)")))
    db.call(lambda s: s.execute(text("INSERT INTO t VALUES (1)")))
    for f in (path, path.with_name("hearth.db-wal")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    db.dispose()
    path.chmod(0o644)  # an older controller's file
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
