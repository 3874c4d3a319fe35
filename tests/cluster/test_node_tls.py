"""Edge → node over TLS with a node credential, in the multi-node lab (issue 24, item 4): nodes serve https with
certificates of a throwaway CA the edges verify; the nodes hold a rotated ring (new key first, old still verifies);
edge 0 still signs with the old key, edge 1 with the new one, edge 2 with a wrong one. The nodes do not even know the
API key the edges check (their HEARTH_API_KEYS differ), so every request that succeeds through an edge was admitted on
the node credential alone. /metrics: 401 without a key on the API port, served on HEARTH_METRICS_LISTEN.

Needs PostgreSQL (the nodes share it): runs in scripts/test.sh's PostgreSQL pass (TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hearth.cluster.lab import NET, Lab
from hearth.fabric.dial import open_connection
from hearth.rfb.ws import first_frame
from tests import nsnames
from tests.cluster.labkit import opened
from tests.cluster.tlskit import make_ca
from tests.image.golden import TESTS_BASE
from tests.pgcluster import fresh_database
from tests.waits import eventually

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL"),
        reason="the nodes share one PostgreSQL: runs in scripts/test.sh's PostgreSQL pass (TEST_DATABASE_URL)",
    ),
]
OLD = "k1:" + "o" * 32
NEW = "k2:" + "n" * 32
WRONG = "k1:" + "w" * 32
NODE_ONLY_KEY = "a-key-only-direct-callers-of-the-nodes-know"


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    with fresh_database(os.environ["TEST_DATABASE_URL"]) as url:
        TESTS_BASE.mkdir(mode=0o711, exist_ok=True)
        prefix = nsnames.new()
        base = TESTS_BASE / prefix
        tls = make_ca(base / "tls", {f"h{i}": [f"{NET}.{10 + i}", "127.0.0.1"] for i in range(2)})
        node = {"HEARTH_API_KEYS": NODE_ONLY_KEY}
        lb = Lab(
            prefix,
            base,
            url,
            n_nodes=2,
            n_edges=3,
            env={"MAX_SESSIONS_PER_USER": "10", "HEARTH_NODE_CREDENTIAL": f"{NEW},{OLD}"},  # nodes: mid-rotation
            per={
                "h0": {**node, "HEARTH_METRICS_LISTEN": f"{NET}.10:9400"},
                "h1": node,
                "e0": {"HEARTH_NODE_CREDENTIAL": OLD},  # not yet rotated
                "e1": {"HEARTH_NODE_CREDENTIAL": NEW},  # rotated
                "e2": {"HEARTH_NODE_CREDENTIAL": WRONG},
            },
            tls_dir=tls.parent,
        )
        async with opened(lb):
            yield lb


def api(lab: Lab, edge: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=lab.edges[edge].url, headers={"Authorization": f"Bearer {lab.api_key}"}, timeout=60
    )


async def started(http: httpx.AsyncClient, sid: str) -> dict[str, Any] | None:
    """The probe of a start through an edge: the session's body once it is past starting."""
    r = await http.get(f"/api/auth/session/{sid}")
    if r.status_code != 200:
        raise RuntimeError(r.text)  # not one of NOT_YET: fails at once, as it did
    s: dict[str, Any] = r.json()
    return s if s["status"] != "starting" else None


async def test_edges_reach_nodes_over_tls_with_a_rotated_node_credential_and_never_the_api_key(lab: Lab) -> None:
    assert all(n.env["HEARTH_NODE_ADDRESS"].startswith("https://") for n in lab.nodes)
    async with api(lab, 0) as e0, api(lab, 1) as e1, api(lab, 2) as e2:
        r = await e0.post("/api/auth/start", json={"user_id": "tls-user"})  # signed with the old key
        assert r.status_code == 201, r.text
        body = r.json()
        sid = body["session_id"]
        assert (await eventually(lambda: started(e0, sid), 90, "the session started", interval=0.2))[
            "status"
        ] == "ready"
        assert (await eventually(lambda: started(e1, sid), 90, "the session started", interval=0.2))[
            "status"
        ] == "ready"  # signed with the new key
        refused = await e2.get(f"/api/auth/session/{sid}")  # a wrong key: the node refuses it, naming the setting
        assert refused.status_code == 401, refused.text
        assert "invalid node credential" in refused.text and "HEARTH_NODE_CREDENTIAL" in refused.text
        bad_key = await e1.get(f"/api/auth/session/{sid}", headers={"Authorization": "Bearer nope"})
        assert bad_key.status_code == 401  # the edge checks the caller's key itself

        # the viewer, through an edge: wss to the node, verified against the CA
        url = f"{lab.edges[1].ws}/api/auth/session/{sid}/novnc/websock?token={body['viewer_token']}"
        frame = await first_frame(url, 60)
        assert frame.init.width > 0 and frame.rects

    node = next(n for n in lab.nodes if n.name == "h0")
    assert lab.tls_dir is not None
    ca = ssl.create_default_context(cafile=str(lab.tls_dir / "ca.pem"))
    async with httpx.AsyncClient(base_url=node.url, verify=ca, timeout=10) as direct:
        assert (await direct.get("/health")).status_code == 200  # the node speaks TLS with the CA's certificate
        assert (await direct.get("/metrics")).status_code == 401  # not public on the API port
        with_key = await direct.get("/metrics", headers={"Authorization": f"Bearer {NODE_ONLY_KEY}"})
        assert with_key.status_code == 200 and "hearth_" in with_key.text
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as untrusting:  # system CAs: refused
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.get("/health")
    async with httpx.AsyncClient(base_url=node.url.replace("https", "http"), timeout=10) as plain:
        try:  # no plain HTTP on the node's port: a TLS error, or uvicorn's 400 to a plaintext request
            r = await plain.get("/health")
        except httpx.HTTPError:
            pass
        else:
            assert r.status_code == 400 and '"ok"' not in r.text, r.text

    # HEARTH_METRICS_LISTEN: /metrics without a key, on the node's own address, port 9400
    reader, writer = await open_connection(node.netns, f"{NET}.10", 9400, 10)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: h0\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"hearth_" in answer, answer[:300]
