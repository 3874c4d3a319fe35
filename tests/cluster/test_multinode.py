"""Several hosts on one machine, with real processes (hearth.cluster.lab): three `hearth node`s, each in its own
network namespace with its own data dir and fabric, and two `hearth edge`s in theirs, on one hub bridge, sharing one
PostgreSQL. Placement spread and affinity, a viewer on edge A reaching a session on another node, a drained node,
a node killed (its sessions end naming it, nothing placed there until it is back), an edge killed mid-stream (the
viewer reconnects through the other edge to the same desktop), and nothing left afterwards.

Needs PostgreSQL (the nodes share it): runs in scripts/test.sh's PostgreSQL pass (TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hearth.cluster import nodes
from hearth.cluster.lab import BIN, Lab
from hearth.rfb.client import handshake, request_frame
from hearth.rfb.ws import WsByteStream, first_frame
from hearth.store.models import CliSandboxRow, SessionRow
from hearth.store.nodestates import NodeState
from tests.cluster.labkit import new_lab, opened
from tests.pgcluster import fresh_database
from tests.waits import eventually

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL"),
        reason="the nodes share one PostgreSQL: runs in scripts/test.sh's PostgreSQL pass (TEST_DATABASE_URL)",
    ),
]


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    with fresh_database(os.environ["TEST_DATABASE_URL"]) as url:
        env = {"MAX_SESSIONS_PER_USER": "10", "MAX_BROWSER_SESSIONS": "30"}
        async with opened(new_lab(url, env=env)) as lb:
            yield lb


def api(lab: Lab, edge: int = 0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=lab.edges[edge].url, headers={"Authorization": f"Bearer {lab.api_key}"}, timeout=60
    )


async def start(http: httpx.AsyncClient, user: str) -> dict[str, Any]:
    r = await http.post("/api/auth/start", json={"user_id": user})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()

    async def past_starting() -> dict[str, Any] | None:
        s: dict[str, Any] = (await http.get(f"/api/auth/session/{body['session_id']}")).json()
        return s if s["status"] != "starting" else None

    s = await eventually(past_starting, 90, "the session past starting", interval=0.2)
    assert s["status"] == "ready", s
    return body


def node_of(lab: Lab, sid: str) -> str:
    db = lab.db()
    try:
        row = db.call(lambda s: s.get(SessionRow, sid))
        assert row is not None
        return row.node_id
    finally:
        db.dispose()


def ws_url(lab: Lab, edge: int, body: dict[str, Any]) -> str:
    return f"{lab.edges[edge].ws}/api/auth/session/{body['session_id']}/novnc/websock?token={body['viewer_token']}"


async def test_placement_routing_drain_death_and_edge_failover(lab: Lab) -> None:
    async with api(lab, 0) as http:
        # -- spread: three users land on three nodes -----------------------------------------------------------
        spread = [await start(http, f"user{i}") for i in range(3)]
        where = [node_of(lab, b["session_id"]) for b in spread]
        assert sorted(where) == ["h0", "h1", "h2"]

        # -- affinity: the user's CLI sandbox lives on h2 (its row written as a CLI sandbox's first start does;
        #    starting a real one would only add a minute of boot here) → the sign-in sandbox goes to h2 too
        db = lab.db()
        db.call(
            lambda s: s.add(CliSandboxRow(user_id="alice", node_id="h2", owner_id="cli-alice", home="/nonexistent"))
        )
        alice = await start(http, "alice")
        assert node_of(lab, alice["session_id"]) == "h2"

        # -- a viewer on edge 0 reaches a session on another node (full RFB, one framebuffer update) -----------
        on_h1 = spread[where.index("h1")]
        frame = await first_frame(ws_url(lab, 0, on_h1), 60)
        assert frame.init.width > 0 and frame.rects
        via_e1 = await first_frame(ws_url(lab, 1, on_h1), 60)  # any edge: one key ring
        forged = {
            **on_h1,
            "viewer_token": on_h1["viewer_token"][:-4] + "AAAA",
        }  # the node checks it: 4401 passes through
        async with connect(ws_url(lab, 0, forged), subprotocols=["binary"]) as ws:  # type: ignore[list-item]
            with pytest.raises(ConnectionClosed) as refused:
                await ws.recv()
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 4401
        assert (via_e1.init.width, via_e1.init.height) == (frame.init.width, frame.init.height)

        # -- an edge killed mid-stream: the viewer reconnects through the other edge to the same desktop --------
        async with connect(ws_url(lab, 0, on_h1), subprotocols=["binary"], max_size=None) as ws:  # type: ignore[list-item]
            stream = WsByteStream(ws, 30)
            init = await handshake(stream.read, stream.write)
            assert await request_frame(stream.read, stream.write, init)
            lab.edges[0].kill()
            with pytest.raises((ConnectionClosed, TimeoutError, OSError)):
                for _ in range(1000):
                    await request_frame(stream.read, stream.write, init)
        again = await first_frame(ws_url(lab, 1, on_h1), 60)
        assert again.init.name == init.name and (again.init.width, again.init.height) == (init.width, init.height)

    async with api(lab, 1) as http:
        # -- drain h0: nothing new there; its live session goes on ---------------------------------------------
        on_h0 = spread[where.index("h0")]
        env = {**lab.nodes[0].env, "HEARTH_DATABASE_URL": lab.database_url}
        argv = [str(BIN), "node", "drain", "h0"]
        out = await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "h0 is draining" in out.stdout, out.stderr
        placed = [node_of(lab, (await start(http, f"d{i}"))["session_id"]) for i in range(2)]
        assert "h0" not in placed
        assert (await http.get(f"/api/auth/session/{on_h0['session_id']}")).json()["status"] == "ready"
        listing = (await http.get("/api/nodes")).json()
        assert {n["id"]: n["state"] for n in listing}["h0"] == "draining"

        # -- kill h1: marked down, its sessions end naming it, viewers get 4502 naming it, nothing placed there -
        killed_at = time.monotonic()
        lab.nodes[1].kill(signal.SIGKILL)
        await lab.wait_nodes({"h1"}, NodeState.DOWN, timeout=30)
        noticed = time.monotonic() - killed_at
        print(f"\nnode h1 killed → marked down in {noticed:.2f}s (HEARTH_NODE_DEAD_AFTER=3, heartbeat 0.5 s)")
        s = (await http.get(f"/api/auth/session/{on_h1['session_id']}")).json()  # the edge answers from the store
        assert s["status"] == "failed" and s["node"] == "h1" and s["reason"].startswith("[node] node h1 is down"), s
        row = db.call(lambda x: x.get(SessionRow, on_h1["session_id"]))
        assert row is not None and row.status == "failed" and "node h1 is down" in (row.reason or "")
        async with connect(ws_url(lab, 1, on_h1), subprotocols=["binary"]) as ws:  # type: ignore[list-item]
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4502
        assert "node h1" in closed.value.rcvd.reason
        for i in range(3):
            assert node_of(lab, (await start(http, f"k{i}"))["session_id"]) == "h2"  # h0 draining, h1 down

        # -- h1 comes back (same data dir, same fabric): up again, it reclaims the sandboxes of its ended sessions
        lab.nodes[1].start()
        await lab.wait_nodes({"h1"})
        views = {v.id: v for v in db.call(nodes.list_nodes)}
        assert views["h1"].reason is None and views["h1"].active == 0
        # the sandboxes that outlived the killed node are removed once it is back
        await eventually(lambda: lab.sandboxes(1) == [], 60, "h1's leftover sandboxes removed", interval=0.2)
        assert node_of(lab, (await start(http, "back"))["session_id"]) == "h1"  # and it takes work again
        db.dispose()
