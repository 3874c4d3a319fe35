"""A partition ends cleanly on both sides (issue 24), in the multi-node lab (hearth.cluster.lab: real `hearth node`s
and an edge in their own namespaces, one shared PostgreSQL): node h1's link is cut (`ip link set eth0 down` inside
its namespace, which this test's lab created) for 3 × dead-after, then restored.

- the viewer through the edge is closed (4502 naming h1) within dead-after + 5 s, and a viewer that reaches h1 without
  its link (the lab's forwarder dials into its namespace) is closed by h1's own fence: 4502 "partitioned";
- the edge never hangs on h1: it answers within a 15 s client bound, and once h1 is marked down the session reads
  as failed, naming h1, from the store;
- the other node's session is untouched;
- when the link returns, h1's sandbox and lease of the failed session are gone within one reconciler pass (its
  memory still held them), it takes new work again, and nothing is left behind.

Needs PostgreSQL: runs in scripts/test.sh's PostgreSQL pass (TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hearth.cluster.lab import Lab
from hearth.rfb.client import handshake, request_frame
from hearth.rfb.ws import WsByteStream
from hearth.store.models import LeaseRow
from hearth.store.nodestates import NodeState
from tests.cluster.labkit import new_lab, opened
from tests.cluster.test_multinode import api, node_of, start, ws_url
from tests.pgcluster import fresh_database
from tests.waits import eventually

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL"),
        reason="the nodes share one PostgreSQL: runs in scripts/test.sh's PostgreSQL pass (TEST_DATABASE_URL)",
    ),
]
DEAD_AFTER = 3.0  # the lab's HEARTH_NODE_DEAD_AFTER (heartbeat 0.5 s)


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    with fresh_database(os.environ["TEST_DATABASE_URL"]) as url:
        async with opened(new_lab(url, n_nodes=3, n_edges=1, env={"MAX_SESSIONS_PER_USER": "10"})) as lb:
            yield lb


def link(lab: Lab, i: int, state: str) -> None:
    subprocess.run(["ip", "-n", lab.nodes[i].netns, "link", "set", "eth0", state], check=True, timeout=10)


async def closed_within(ws: object, bound: float) -> tuple[int, str, float]:
    """Read until the viewer is closed (bounded): (code, reason, seconds it took)."""
    t0 = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(bound):
            while True:
                await ws.recv()  # type: ignore[attr-defined]
    rcvd = closed.value.rcvd
    assert rcvd is not None, f"closed without a close frame: {closed.value}"
    return rcvd.code, rcvd.reason, time.monotonic() - t0


async def test_a_node_cut_off_is_fenced_marked_down_and_cleans_up_when_back(lab: Lab) -> None:
    async with api(lab, 0) as http:
        bodies = [await start(http, f"user{i}") for i in range(2)]  # spread: one on h0, one on h1
        where = {node_of(lab, b["session_id"]): b for b in bodies}
        assert sorted(where) == ["h0", "h1"]
        on_h1, on_h0 = where["h1"], where["h0"]
        sid = on_h1["session_id"]
        assert lab.sandboxes(1) != []

        direct_url = f"{lab.nodes[1].ws}/api/auth/session/{sid}/novnc/websock?token={on_h1['viewer_token']}"
        async with (
            connect(ws_url(lab, 0, on_h1), subprotocols=["binary"], max_size=None) as via_edge,  # type: ignore[list-item]
            connect(direct_url, subprotocols=["binary"], max_size=None) as direct,  # type: ignore[list-item]
        ):
            for ws in (via_edge, direct):
                stream = WsByteStream(ws, 30)
                init = await handshake(stream.read, stream.write)
                assert await request_frame(stream.read, stream.write, init)

            cut = time.monotonic()
            link(lab, 1, "down")
            try:
                edge_close, direct_close = await asyncio.gather(
                    closed_within(via_edge, DEAD_AFTER + 5), closed_within(direct, DEAD_AFTER + 10)
                )
                code, reason, took = edge_close
                print(f"\nlink cut: the edge's viewer closed after {took:.2f}s ({code} {reason!r})")
                assert code == 4502 and "node h1" in reason, edge_close
                code, reason, took = direct_close
                print(f"link cut: h1 fenced itself, its own viewer closed after {took:.2f}s ({code} {reason!r})")
                assert code == 4502 and "node h1 partitioned" in reason, direct_close

                # The edge never hangs on h1 (the client gives up at 15 s, well under the old 30 s).
                async with httpx.AsyncClient(
                    base_url=lab.edges[0].url, headers={"Authorization": f"Bearer {lab.api_key}"}, timeout=15
                ) as quick:
                    r = await quick.get(f"/api/auth/session/{sid}")
                    assert r.status_code in (200, 503), r.text
                    if r.status_code == 503:
                        assert "node h1" in r.json()["error"] and int(r.headers["retry-after"]) > 0, r.text
                    await lab.wait_nodes({"h1"}, NodeState.DOWN, timeout=30)
                    print(f"link cut: h1 marked down {time.monotonic() - cut:.2f}s after the cut")
                    t0 = time.monotonic()
                    r = await quick.get(f"/api/auth/session/{sid}")
                    print(f"a down node's session read through the edge in {time.monotonic() - t0:.3f}s")
                    assert r.status_code == 200, r.text
                    s = r.json()
                    assert s["status"] == "failed" and s["node"] == "h1", s
                    assert s["reason"].startswith("[node] node h1 is down"), s
                    other = (await quick.get(f"/api/auth/session/{on_h0['session_id']}")).json()
                    assert other["status"] == "ready" and other["node"] == "h0", other
                await asyncio.sleep(max(0.0, 3 * DEAD_AFTER - (time.monotonic() - cut)))
                assert lab.sandboxes(1) != []  # h1 is cut off: it cannot know yet
            finally:
                link(lab, 1, "up")

        back = time.monotonic()
        await lab.wait_nodes({"h1"}, NodeState.UP, timeout=60)
        print(f"link back: h1 beats (up) again {time.monotonic() - back:.2f}s after")
        db = lab.db()

        def leased() -> list[str]:
            return db.call(lambda x: list(x.scalars(select(LeaseRow.session_id).where(LeaseRow.node_id == "h1"))))

        try:
            await eventually(
                lambda: not lab.sandboxes(1) and sid not in leased(), 60, "h1's sandbox and lease gone", interval=0.2
            )
            print(f"link back: h1's sandbox and lease of the failed session gone {time.monotonic() - back:.2f}s after")
            assert lab.sandboxes(1) == []
            assert sid not in leased()
        finally:
            db.dispose()
    async with httpx.AsyncClient(
        base_url=lab.nodes[1].url, headers={"Authorization": f"Bearer {lab.api_key}"}, timeout=60
    ) as h1:
        again = await start(h1, "after")  # h1 itself admits again: its fence is lifted
        assert node_of(lab, again["session_id"]) == "h1"
