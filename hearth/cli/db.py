"""`hearth db upgrade|status`: the database schema (Alembic migrations in hearth/store/migrations)."""

from __future__ import annotations

import typer
from sqlalchemy import create_engine

from hearth.cli.common import fail, settings_or_exit
from hearth.errors import HearthError, StoreError
from hearth.store import schema
from hearth.store.db import describe, sqlite_path

DB_HINT = "check HEARTH_DATABASE_URL (server up, credentials) or HEARTH_DATA_DIR, then retry"

db_app = typer.Typer(help="The state store's schema (SQLite or PostgreSQL).", no_args_is_help=True)


@db_app.command()
def upgrade() -> None:
    """Migrate the store to the schema this hearth needs (a hearth 0.1 store is adopted as the baseline)."""
    s = settings_or_exit()
    path = sqlite_path(s.db_url)
    if path is not None and not path.exists():
        fail(f"no SQLite store at {path}; `hearth serve` creates a fresh one (check HEARTH_DATA_DIR)", 2)
    engine = create_engine(s.db_url)
    try:
        before, after = schema.upgrade(engine)
    except HearthError as exc:
        fail(exc.reason, 2)
    except Exception as exc:
        fail(StoreError(f"the state store is unavailable: {describe(exc)}", DB_HINT).reason, 1)
    finally:
        engine.dispose()
    if before == after:
        typer.echo(f"the store is at {after} already")
    else:
        typer.echo(f"upgraded the store from {before or 'hearth 0.1 (no version)'} to {after}")


@db_app.command()
def status() -> None:
    """The store's schema revision and the one this hearth needs."""
    s = settings_or_exit()
    engine = create_engine(s.db_url)
    try:
        with engine.connect() as conn:
            rev, tables = schema.state(conn)
    except Exception as exc:
        fail(StoreError(f"the state store is unavailable: {describe(exc)}", DB_HINT).reason, 1)
    finally:
        engine.dispose()
    want = schema.head()
    shown = rev or ("hearth 0.1 (no version)" if tables else "empty")
    typer.echo(f"store: {shown}; this hearth needs: {want}" + ("" if rev == want else " — run `hearth db upgrade`"))
    if rev != want:
        raise typer.Exit(1)
