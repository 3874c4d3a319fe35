"""The database schema's version (Alembic): checked at start, upgraded only by `hearth db upgrade`.

- empty store            → created at the newest revision (a fresh install needs no extra step)
- at the newest revision → fine
- older (or hearth 0.1's create_all schema, which has no version) → refused, naming `hearth db upgrade`
- newer than this hearth knows → refused (never run an older hearth on a newer store)
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect

from hearth.errors import SchemaError

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001_baseline"
UPGRADE_HINT = "run `hearth db upgrade` (with the same HEARTH_DATABASE_URL / HEARTH_DATA_DIR), then start hearth again"


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None
    return rev


def _known(rev: str) -> bool:
    try:
        return ScriptDirectory.from_config(_config()).get_revision(rev) is not None
    except CommandError:
        return False


def state(conn: Connection) -> tuple[str | None, bool]:
    """(the store's revision, whether it holds hearth tables at all)."""
    rev = MigrationContext.configure(conn).get_current_revision()
    return rev, "sessions" in inspect(conn).get_table_names()


def ensure(engine: Engine) -> None:
    """Create an empty store at the newest revision; refuse one that is behind or ahead."""
    want = head()
    with engine.begin() as conn:
        rev, has_tables = state(conn)
        if rev == want:
            return
        if rev is None and not has_tables:
            command.upgrade(_config(conn), "head")
            return
    if rev is None:
        raise SchemaError(
            f"the database holds hearth tables without a schema version (hearth 0.1); {want} needed", UPGRADE_HINT
        )
    if _known(rev):
        raise SchemaError(f"the database schema is at {rev}, this hearth needs {want}", UPGRADE_HINT)
    raise SchemaError(
        f"the database schema is at {rev}, newer than this hearth knows (newest: {want})",
        "run the hearth version that wrote this store (or a newer one); never run an older hearth on a newer store",
    )


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the store to the newest revision (`hearth db upgrade`); returns (from, to)."""
    want = head()
    with engine.begin() as conn:
        rev, has_tables = state(conn)
        if rev is not None and not _known(rev):
            raise SchemaError(
                f"the database schema is at {rev}, newer than this hearth knows (newest: {want})",
                "upgrade hearth instead; a store is never downgraded",
            )
        cfg = _config(conn)
        if rev is None and has_tables:
            command.stamp(cfg, BASELINE)  # hearth 0.1 made exactly the baseline with create_all
        command.upgrade(cfg, "head")
    return rev, want
