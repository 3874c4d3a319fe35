"""Engine and unit-of-work helpers. Synchronous SQLAlchemy, run off the event loop with `run()`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from hearth.store.models import Base

T = TypeVar("T")


class Database:
    """One engine per controller. `run(fn)` executes `fn(session)` in a worker thread inside a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                _private(Path(path))
            connect_args = {"timeout": 10, "check_same_thread": False}
        else:
            connect_args = {"connect_timeout": 10}
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    def call(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction (commit on success, roll back on error), synchronously."""
        with self._factory.begin() as session:
            return fn(session)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction in a worker thread."""
        return await asyncio.to_thread(self.call, fn)

    def dispose(self) -> None:
        self.engine.dispose()


def _private(path: Path) -> None:
    """The database file (and so SQLite's -wal/-shm, which take its mode) is the controller's alone: 0600."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    os.chmod(path, 0o600)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
