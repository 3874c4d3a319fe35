"""The store's schema: Alembic migrations equal the models, the start-up check, `hearth db upgrade`, file modes.

Real SQLite files (and, in scripts/test.sh's second pass, a fresh PostgreSQL database per test).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from hearth.cli.main import app as cli
from hearth.config import Settings
from hearth.errors import SchemaError
from hearth.store import schema
from hearth.store.db import Database
from hearth.store.models import Base


@pytest.fixture
def url(make_settings: Callable[..., Settings]) -> Iterator[str]:
    yield make_settings().db_url


def test_migrations_head_equals_the_models(url: str) -> None:
    """Fails when a model changes without a migration: add one in hearth/store/migrations/versions."""
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert MigrationContext.configure(conn).get_current_revision() == schema.head()
    finally:
        db.dispose()
    assert diff == [], f"models and migrations differ (write a migration): {diff}"


def test_a_store_behind_is_refused_naming_the_upgrade_then_upgraded(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg = schema._config(conn)
        command.upgrade(cfg, schema.BASELINE)
    with pytest.raises(SchemaError) as caught:
        Database(url)
    assert "hearth db upgrade" in caught.value.reason and caught.value.reason.startswith("[store]")
    assert schema.upgrade(engine) == (schema.BASELINE, schema.head())
    engine.dispose()
    db = Database(url)  # now it starts
    assert db.call(lambda s: s.execute(text("SELECT name FROM locks ORDER BY name")).scalars().all()) == [
        "admission",
        "health",
    ]
    db.dispose()


def test_a_hearth_01_store_without_version_is_adopted_by_upgrade(url: str) -> None:
    engine = create_engine(url)
    legacy = [t for name, t in Base.metadata.tables.items() if name not in ("locks", "nodes")]
    Base.metadata.create_all(engine, tables=legacy)  # what hearth 0.1's create_all left behind
    with pytest.raises(SchemaError, match="hearth db upgrade"):
        Database(url)
    before, after = schema.upgrade(engine)
    assert (before, after) == (None, schema.head())
    engine.dispose()
    Database(url).dispose()


def test_a_store_ahead_is_refused(url: str) -> None:
    Database(url).dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaError, match="newer than this hearth"):
        Database(url)
    with pytest.raises(SchemaError, match="never downgraded"):
        schema.upgrade(engine)
    engine.dispose()


def test_db_cli_upgrade_and_status(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_settings()
    for k, v in {"HEARTH_DATA_DIR": str(s.data_dir), "HEARTH_DATABASE_URL": s.database_url}.items():
        monkeypatch.setenv(k, v)
    engine = create_engine(s.db_url)
    Base.metadata.create_all(engine, tables=[t for n, t in Base.metadata.tables.items() if n not in ("locks", "nodes")])
    engine.dispose()
    runner = CliRunner()
    st = runner.invoke(cli, ["db", "status"])
    assert st.exit_code == 1 and "hearth db upgrade" in " ".join(st.output.split()), st.output
    up = runner.invoke(cli, ["db", "upgrade"])
    assert up.exit_code == 0 and f"to {schema.head()}" in up.output, up.output
    again = runner.invoke(cli, ["db", "upgrade"])
    assert again.exit_code == 0 and "already" in again.output
    assert runner.invoke(cli, ["db", "status"]).exit_code == 0


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "hearth.db"
    db = Database(f"sqlite:///{path}")
    db.probe()
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if f.exists():
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert path.exists()
    db.dispose()
