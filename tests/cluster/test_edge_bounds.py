"""An edge never hangs on a node, and answers for the cluster (issue 24): a node that accepts connections but never
answers (a real loopback socket) is a 503 naming it within the edge's bound; a down node's session reads as the
store has it (failed, naming the node) without asking the node; every node full is 503 "cluster full" with
Retry-After. Real store (SQLite here; a fresh PostgreSQL database per test on the PostgreSQL pass)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from hearth.cluster import nodes
from hearth.config import Settings
from hearth.store.db import Database
from hearth.store.models import SessionRow
from tests.cluster.labkit import edge_app

KEY = {"Authorization": "Bearer k1"}


@contextlib.asynccontextmanager
async def silent_node() -> AsyncIterator[str]:
    """A node address that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for w in held:
            w.close()
        server.close()


def register(db: Database, node_id: str, address: str, capacity: int = 4) -> None:
    nodes.heartbeat(db, nodes.Registration(node_id, address, capacity, capacity, ("netns",), "0.1.0"))


def session(db: Database, sid: str, node_id: str, user: str = "u") -> None:
    db.call(
        lambda s: s.add(SessionRow(id=sid, node_id=node_id, user_id=user, status="ready", driver="netns", fabric="f"))
    )


@pytest.fixture
async def edge(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    async with edge_app(make_settings(HEARTH_API_KEYS="k1", HEARTH_RATE_LIMIT="0")) as pair:
        yield pair


async def test_a_silent_node_is_a_503_naming_it_and_a_down_nodes_session_reads_failed(
    edge: tuple[httpx.AsyncClient, Database],
) -> None:
    client, db = edge
    async with silent_node() as address:
        register(db, "h9", address)
        session(db, "s1", "h9")
        async with asyncio.timeout(15):  # bounded well under the 30 s it took before (then a 502)
            r = await client.get("/api/auth/session/s1", headers=KEY)
        assert r.status_code == 503, r.text
        assert r.json()["error"].startswith("[node] node h9 did not respond within"), r.text
        assert int(r.headers["retry-after"]) > 0

        later = datetime.now(UTC) + timedelta(seconds=60)
        assert nodes.sweep(db, 10, now=later) == {"h9": 1}  # marked down: its session failed naming it
        assert (await client.get("/api/auth/session/s1")).status_code == 401  # the edge checks the key itself
        r = await client.get("/api/auth/session/s1", headers=KEY)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "failed" and body["node"] == "h9" and body["hop"] == "node", body
        assert body["reason"].startswith("[node] node h9 is down: no heartbeat since"), body
        cancel = await client.post("/api/auth/session/s1/cancel", headers=KEY)  # not a read: names the node
        assert cancel.status_code == 502 and "node h9 is down" in cancel.json()["error"], cancel.text


async def test_every_node_full_is_cluster_full_with_retry_after(edge: tuple[httpx.AsyncClient, Database]) -> None:
    client, db = edge
    for i in range(2):
        register(db, f"h{i}", f"http://127.0.0.1:9/h{i}", capacity=1)
        session(db, f"s{i}", f"h{i}", user=f"u{i}")
    r = await client.post("/api/auth/start", json={"user_id": "new"}, headers=KEY)
    assert r.status_code == 503, r.text
    assert "cluster full: 2 sessions on 2 nodes" in r.json()["error"], r.text
    assert int(r.headers["retry-after"]) > 0
