"""A throwaway local PostgreSQL, for the tests, the cluster benchmarks and `hearth demo --nodes N`: a fresh database
on a server (`fresh_database`), and a local cluster of Debian's PostgreSQL 15 (`Cluster`: initdb as the `postgres`
user into a temp dir, unix socket in that dir plus 127.0.0.1 on a random port; stop/start for the chaos tests;
removed afterwards). Never for production data.

scripts/test.sh starts its cluster for the second pass with the same commands.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty database on the server of `admin_url` (dropped on exit); yields its URL."""
    name = f"hearth_t{secrets.token_hex(5)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def available() -> bool:
    return os.geteuid() == 0 and (PG_BIN / "initdb").exists() and _has_user("postgres")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class Cluster:
    """A throwaway PostgreSQL cluster owned by this process (root only: it runs the server as `postgres`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="hearth-pg-"))
        self.data = self.dir / "data"
        shutil.chown(self.dir, "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._pg("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def cluster(port: int) -> Iterator[Cluster]:
    c = Cluster(port)
    try:
        c.start()
        yield c
    finally:
        c.remove()


@contextlib.contextmanager
def scratch_database(admin_url: str = "") -> Iterator[str]:
    """A fresh database of its own (dropped on exit): on the server of `admin_url`, else on a local throwaway
    cluster. Raises RuntimeError naming the fix when neither is possible."""
    if admin_url:
        with fresh_database(admin_url) as url:
            yield url
        return
    if not available():
        raise RuntimeError(
            "needs PostgreSQL: give a server's URL, or install postgresql-15 (scripts/setup.sh) and run as root"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with cluster(port) as c, fresh_database(c.url) as url:
        yield url
