"""Shared by the cluster benchmarks: a throwaway PostgreSQL (TEST_DATABASE_URL, or a local cluster started the way
scripts/test.sh does) and a `hearth.cluster.lab.Lab` on it; everything is removed afterwards."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from hearth.api.local import free_port
from hearth.cluster.lab import Lab
from tests.pgcluster import available, cluster, fresh_database


@contextlib.contextmanager
def database() -> Iterator[str]:
    admin = os.environ.get("TEST_DATABASE_URL", "")
    if admin:
        with fresh_database(admin) as url:
            yield url
        return
    if not available():
        raise SystemExit("needs PostgreSQL: set TEST_DATABASE_URL or install postgresql-15 (scripts/setup.sh)")
    with cluster(free_port()) as c, fresh_database(c.url) as url:
        yield url


@contextlib.asynccontextmanager
async def lab(url: str, nodes: int, edges: int, env: dict[str, str] | None = None) -> AsyncIterator[Lab]:
    prefix = f"hearth-b{secrets.token_hex(3)}"
    lb = Lab(prefix, Path("/var/tmp") / prefix, url, nodes, edges, env or {})
    try:
        await lb.open()
        yield lb
    finally:
        await lb.close()
        left = lb.leftovers()
        print(f"leaks after the lab: {len(left)} {left if left else ''}")
