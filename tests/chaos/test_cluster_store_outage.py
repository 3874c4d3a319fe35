"""A database outage is nobody's death (issue 24): the multi-node lab (hearth.cluster.lab: three `hearth node`s and an
edge in their own namespaces) on a PostgreSQL server of this test's own, stopped for 2 × dead-after and started again.

Before: whichever process swept first after the outage marked the live nodes down — 2 or 3 of 3 healthy sessions
failed per outage, their sandboxes leaked. Now: 0 sessions fail, no node is marked down, the viewer streams
throughout, and a start during the outage is a 503 naming `[store]` with Retry-After.

Needs root and Debian's postgresql (scripts/setup.sh); runs in the PostgreSQL pass (TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from hearth.cluster import nodes
from hearth.cluster.lab import Lab
from hearth.rfb.client import handshake, request_frame
from hearth.rfb.ws import WsByteStream
from hearth.serving.local import free_port
from hearth.store.nodestates import NodeState
from hearth.store.pglocal import Cluster
from tests.chaos.faults import assert_store_refusal
from tests.cluster.labkit import new_lab, opened
from tests.cluster.test_multinode import api, node_of, start, ws_url
from tests.pgcluster import available, cluster, fresh_database

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL"),
        reason="a cluster on PostgreSQL: runs in scripts/test.sh's PostgreSQL pass (TEST_DATABASE_URL)",
    ),
]
DEAD_AFTER = 3.0  # the lab's HEARTH_NODE_DEAD_AFTER (heartbeat 0.5 s)
# how long the database stays down: 2 × dead-after, or HEARTH_TEST_OUTAGE seconds (the measurements: 5, 15, 60)
OUTAGE = float(os.environ.get("HEARTH_TEST_OUTAGE") or 2 * DEAD_AFTER)


@pytest.fixture
async def pg_lab() -> AsyncIterator[tuple[Lab, Cluster]]:
    if not available():
        pytest.skip("needs root and Debian's postgresql (scripts/setup.sh)")
    with cluster(free_port()) as pg, fresh_database(pg.url) as url:

        async def store_back() -> None:  # the nodes drain through it
            with contextlib.suppress(subprocess.CalledProcessError):  # already running: fine
                await asyncio.to_thread(pg.start)

        lab = new_lab(url, n_nodes=3, n_edges=1, env={"MAX_SESSIONS_PER_USER": "10"})
        async with opened(lab, before_close=store_back) as lb:
            yield lb, pg


async def test_a_database_outage_of_twice_dead_after_fails_no_session(pg_lab: tuple[Lab, Cluster]) -> None:
    lab, pg = pg_lab
    async with api(lab, 0) as http:
        bodies = [await start(http, f"user{i}") for i in range(3)]
        assert sorted(node_of(lab, b["session_id"]) for b in bodies) == ["h0", "h1", "h2"]
        async with connect(ws_url(lab, 0, bodies[1]), subprotocols=["binary"], max_size=None) as ws:  # type: ignore[list-item]
            stream = WsByteStream(ws, 30)
            init = await handshake(stream.read, stream.write)
            assert await request_frame(stream.read, stream.write, init)

            await asyncio.to_thread(pg.stop)  # in a thread: this loop runs the lab's forwarders
            stopped = time.monotonic()
            refused = assert_store_refusal(await http.post("/api/auth/start", json={"user_id": "during"}))
            print(f"\nstart during the outage: 503 {refused!r}")
            frames = 0
            while time.monotonic() - stopped < OUTAGE:  # the viewer streams throughout
                assert await request_frame(stream.read, stream.write, init)
                frames += 1
                await asyncio.sleep(0.25)
            await asyncio.to_thread(pg.start)
            print(f"database down {time.monotonic() - stopped:.1f}s: {frames} frames streamed meanwhile")

            # Every sweeper (3 nodes, the edge) is back and has had 2 × dead-after to judge: nobody is down.
            back = time.monotonic()
            while time.monotonic() - back < 3 * DEAD_AFTER:
                assert await request_frame(stream.read, stream.write, init)
                await asyncio.sleep(0.25)

        db = lab.db()
        try:
            views = {v.id: v for v in db.call(nodes.list_nodes)}
        finally:
            db.dispose()
        assert {i: v.state for i, v in views.items()} == {n: NodeState.UP for n in ("h0", "h1", "h2")}, views
        statuses = [(await http.get(f"/api/auth/session/{b['session_id']}")).json() for b in bodies]
        lost = [s for s in statuses if s["status"] != "ready"]
        print(f"sessions lost to the outage: {len(lost)} of {len(statuses)}")
        assert lost == []
        fresh = await start(http, "after")  # and new work is taken again
        assert fresh["session_id"]
