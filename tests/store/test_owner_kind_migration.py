"""Migration 0011: the owner kind of leases and sandboxes becomes a column, filled from the old id prefixes on an
existing store, and dropped again on downgrade (the ids keep their prefixes). SQLite here; PostgreSQL in
scripts/test.sh's second pass (TEST_DATABASE_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from hearth.config import Settings
from hearth.store import schema

BEFORE = "0010_prompts"
LEASES = {"sess-1": "session", "cli-ab12": "cli", "pool-cd34": "pool", "reclaim-7": "reclaim", "cli_x": "session"}
SANDBOXES = {"sess-1": "session", "cli-ab12": "cli", "pool-cd34": "pool"}


@pytest.fixture
def engine(make_settings: Callable[..., Settings]) -> Iterator[Engine]:
    settings = make_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.db_url)
    yield engine
    engine.dispose()


def _migrate(engine: Engine, rev: str, down: bool = False) -> None:
    with engine.begin() as conn:
        (command.downgrade if down else command.upgrade)(schema._config(conn), rev)


def _fill(engine: Engine) -> None:
    with engine.begin() as conn:
        for i, owner in enumerate(LEASES):
            conn.execute(
                text(
                    "INSERT INTO leases (node_id, fabric, slot, ip, session_id, created_at) "
                    "VALUES ('local', 'hearth', :slot, :ip, :owner, CURRENT_TIMESTAMP)"
                ),
                {"slot": i, "ip": f"192.168.100.{10 + i}", "owner": owner},
            )
        for i, owner in enumerate(SANDBOXES):
            conn.execute(
                text(
                    "INSERT INTO sandboxes (owner_id, node_id, kind, state, fabric, slot, driver, desktop, key_id, "
                    "nonce, ciphertext, created_at) VALUES (:owner, 'local', 'session', 'running', 'hearth', :slot, "
                    "'netns', :desktop, 'k', :nonce, :ct, CURRENT_TIMESTAMP)"
                ),
                {"owner": owner, "slot": i, "desktop": True, "nonce": b"\0" * 12, "ct": b"x"},
            )


def _kinds(engine: Engine, table: str, id_column: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {id_column}, owner_kind FROM {table}"))
        return {str(owner): str(kind) for owner, kind in rows}


def test_upgrade_fills_the_owner_kind_from_the_old_prefixes_and_downgrade_drops_it(engine: Engine) -> None:
    _migrate(engine, BEFORE)
    _fill(engine)
    _migrate(engine, "0011_owner_kind")
    assert _kinds(engine, "leases", "session_id") == LEASES
    assert _kinds(engine, "sandboxes", "owner_id") == SANDBOXES
    with engine.begin() as conn:  # a new row without a kind is a session's
        conn.execute(
            text(
                "INSERT INTO leases (node_id, fabric, slot, ip, session_id, created_at) "
                "VALUES ('local', 'hearth', 40, '192.168.100.60', 'later', CURRENT_TIMESTAMP)"
            )
        )
    assert _kinds(engine, "leases", "session_id")["later"] == "session"

    _migrate(engine, BEFORE, down=True)
    for table in ("leases", "sandboxes"):
        assert "owner_kind" not in {c["name"] for c in inspect(engine).get_columns(table)}
    with engine.connect() as conn:
        owners = set(conn.execute(text("SELECT session_id FROM leases")).scalars())
    assert owners == {*LEASES, "later"}  # every lease kept, its id (and prefix) unchanged

    _migrate(engine, "head")  # and up again
    assert _kinds(engine, "leases", "session_id") == {**LEASES, "later": "session"}


def test_an_unknown_owner_kind_is_refused_by_the_store(engine: Engine) -> None:
    _migrate(engine, "head")
    with pytest.raises(Exception, match=r"(?i)check|constraint"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO leases (node_id, fabric, slot, ip, session_id, owner_kind, created_at) "
                "VALUES ('local', 'hearth', 1, '192.168.100.3', 'x', 'visitor', CURRENT_TIMESTAMP)"
            )
        )
