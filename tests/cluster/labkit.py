"""One way to run a multi-node lab in a test (hearth/cluster/lab.py): named by the test's own namespace prefix, opened,
and on the way out closed and checked for leftovers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from hearth.cluster.lab import Lab
from hearth.config import Settings
from hearth.edge.app import create_edge_app
from hearth.store.db import Database
from tests import nsnames
from tests.image.golden import TESTS_BASE


def new_lab(url: str, **kw: Any) -> Lab:
    """A lab on the store `url`, under a namespace prefix of this test's own (not opened yet)."""
    TESTS_BASE.mkdir(mode=0o711, exist_ok=True)
    prefix = nsnames.new()
    return Lab(prefix, TESTS_BASE / prefix, url, **kw)


@contextlib.asynccontextmanager
async def opened(lab: Lab, before_close: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[Lab]:
    """`lab` opened; afterwards (`before_close` first, e.g. bringing back a store the nodes drain through) closed, and
    nothing it made may be left."""
    try:
        await lab.open()
        yield lab
    finally:
        if before_close is not None:
            await before_close()
        await lab.close()
        assert lab.leftovers() == [], "the multi-node lab leaked"


@contextlib.asynccontextmanager
async def edge_app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    """A real edge app (no lab) over ASGI on `settings`' store: its client and the store, disposed afterwards."""
    db = Database(settings.db_url, settings.data_dir)
    try:
        app = create_edge_app(settings, db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e", timeout=15) as c:
            yield c, db
    finally:
        db.dispose()
