"""Engine and unit-of-work helpers. Synchronous SQLAlchemy, run off the event loop on the store's own executor.

Every failure of the database or the data directory becomes a `StoreError` here (hop `store`, no library text),
which the API answers with 503 + Retry-After. The store checks, before each transaction, that the data directory
is still the one it opened (same device and inode): after it vanished or was replaced, nothing is written anywhere.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from hearth.errors import StoreError
from hearth.store import schema
from hearth.store.models import LockRow

T = TypeVar("T")
DB_WORKERS = 8  # threads (and pooled connections) for database work; nothing else runs on them
STATEMENT_TIMEOUT_MS = 15_000


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


class Database:
    """One engine per controller. `run(fn)` executes `fn(session)` on the store's executor inside a transaction."""

    def __init__(self, url: str, data_dir: Path | None = None, workers: int = DB_WORKERS) -> None:
        self.url = url
        self.data_dir = data_dir
        # An open handle on the data dir: its inode cannot be reused while held, so "same inode" stays meaningful.
        self._dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if data_dir is not None else None
        self.file = sqlite_path(url)
        connect_args: dict[str, Any]
        if url.startswith("sqlite"):
            if self.file is not None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                _private(self.file)  # never world-readable, not even once
            connect_args = {"timeout": 10, "check_same_thread": False}
        else:
            connect_args = {"connect_timeout": 10, "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"}
        self.engine: Engine = create_engine(
            url,
            connect_args=connect_args,
            pool_pre_ping=True,  # a connection that died with the server is replaced, not handed out
            pool_size=workers,
            max_overflow=0,
            pool_timeout=10,
        )
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", self._sqlite_connect)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hearth-db")
        self._guard(lambda: schema.ensure(self.engine))

    def check_data_dir(self) -> None:
        """Raise StoreError while the path does not lead to the very directory the store opened (checked before
        every transaction). The same directory moved back to its path resumes service at once — it is the one hearth
        holds open, and nothing was written while it was away; any other directory there (a restored backup, a new
        mount, an empty one) never does: that needs a restart, which opens it afresh."""
        if self.data_dir is None or self._dir_fd is None:
            return
        held = os.fstat(self._dir_fd)
        now = _identity(self.data_dir)
        if held.st_nlink == 0:
            gone, fix = "was removed", "restore the data directory from its backup and restart hearth"
        elif now is None:
            gone = "was moved away (or removed)"
            fix = (
                "move the same directory back to its path (service resumes at once), or restore a backup there and "
                "restart hearth"
            )
        elif now != (held.st_dev, held.st_ino):
            gone = "was replaced by another directory"
            fix = (
                "put the directory hearth opened back at its path (service resumes at once); for a restored backup "
                "or another directory, restart hearth"
            )
        else:
            return
        raise StoreError(
            f"the data directory {self.data_dir} {gone} while hearth was running; no new work is accepted", fix
        )

    def call(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction (commit on success, roll back on error), synchronously."""

        def work() -> T:
            with self._factory.begin() as session:
                return fn(session)

        return self._guard(work)

    def admit(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction that first takes the admission lock (row lock on PostgreSQL, the write lock
        on SQLite): concurrent admissions run one after another, so counts read inside `fn` stay true until commit."""

        def locked(db: Session) -> T:
            lock(db, "admission")
            return fn(db)

        return self.call(locked)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction on the store's executor (never the default one, shared with others)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.call, fn)

    async def offload(self, work: Callable[[], T]) -> T:
        """Run `work` (which calls `call`/`admit` itself, e.g. with retries) on the store's executor."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def probe(self) -> None:
        """The database answers and takes a write (raises StoreError otherwise)."""
        self.call(lambda db: lock(db, "health"))

    def dispose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _guard(self, work: Callable[[], T]) -> T:
        self.check_data_dir()
        try:
            return work()
        except IntegrityError:
            raise  # a constraint decided (e.g. a lease slot taken): the caller handles it
        except (DBAPIError, PoolTimeout) as exc:
            what = describe(exc)
            raise StoreError(f"the state store is unavailable: {what}", HINTS.get(what, "")) from exc
        except SQLAlchemyError as exc:
            what = describe(exc)
            raise StoreError(f"the state store failed: {what}", HINTS.get(what, "")) from exc
        except OSError as exc:  # the SQLite file or its directory
            raise StoreError(f"the state store is unavailable: {exc.strerror or 'I/O error'}") from exc

    def _sqlite_connect(self, dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        if self.file is not None:
            for suffix in ("", "-wal", "-shm"):
                path = Path(f"{self.file}{suffix}")
                if path.exists() and path.stat().st_mode & 0o077:
                    path.chmod(0o600)


def lock(db: Session, name: str) -> None:
    """Take the lock row `name` for the rest of the transaction (a write: row lock / SQLite's write lock)."""
    db.execute(update(LockRow).where(LockRow.name == name).values(generation=LockRow.generation + 1))


HINTS = {
    "its disk is full": "free space on the database's disk (HEARTH_DATA_DIR for SQLite); hearth resumes on its own",
    "it is read-only": "make the database writable again; hearth resumes on its own",
    "the database server cannot be reached": "start the database server or fix HEARTH_DATABASE_URL; hearth "
    "reconnects on its own",
}


def describe(exc: BaseException) -> str:
    """What went wrong, in hearth's words: no driver class names, no library URLs, no connection strings."""
    orig = getattr(exc, "orig", None) or exc
    msg = str(orig).lower()
    for needles, what in (
        (("disk is full", "no space left", "could not extend", "disk full"), "its disk is full"),
        (("readonly", "read-only"), "it is read-only"),
        (("database is locked",), "it is locked by another writer"),
        (("unable to open database",), "the database file cannot be opened"),
        (("no such table", "no such column", "does not exist"), "its schema does not match (run `hearth db upgrade`)"),
        (("statement timeout", "canceling statement"), "a statement timed out"),
        (("queuepool limit", "timed out"), "no database connection became free in time"),
        (
            ("connection", "could not connect", "server closed", "terminating", "connect", "refused", "shutting down"),
            "the database server cannot be reached",
        ),
    ):
        if any(n in msg for n in needles):
            return what
    if isinstance(exc, PoolTimeout):
        return "no database connection became free in time"
    return "the database refused the operation"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _private(path: Path) -> None:
    """The database file (and so SQLite's -wal/-shm, which take its mode) is the controller's alone: 0600."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    os.chmod(path, 0o600)
