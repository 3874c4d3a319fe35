"""A node acts only on what it owns (issue 20, item 1). Two nodes n1 and n2 on one store, with one API key and one
token secret (as a cluster's nodes are), each with a live session in its slot 0: every session route and the viewer
WebSocket called on the wrong node is refused — 421 naming the owning node and its address, close 4421 — and logged;
a token n2 issued is refused by n1 (4401 naming both nodes); both desktops and both sessions are unharmed.

Two real controllers in this process, each with its own fabric namespace, data dir and node id, sharing the test's
PostgreSQL database in the PostgreSQL pass (else one SQLite file, as tests/clisandbox/test_handover.py does)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hearth.config import Settings
from hearth.gateway.tokens.base import Scope
from hearth.gateway.tokens.signed import SignedTokens, parse_ring
from hearth.log import JsonFormatter
from hearth.rfb.ws import first_frame
from hearth.session.owner import address_of
from hearth.store.models import CliSandboxRow
from tests.conftest import Running, running_controller
from tests.live import Live, start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# (method, path under /api/auth/session/{id} or a full path with {id}, JSON body)
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "", None),
    ("POST", "/heartbeat", None),
    ("GET", "/events", None),
    ("GET", "/console", None),
    ("POST", "/token", {"scope": "control"}),
    ("POST", "/token", {"scope": "view"}),
    ("GET", "/api/diagnostics/{id}?gateway=false", None),
    ("POST", "/code", {"code": "ABCD-EFGH"}),
    ("GET", "/status?token={unbound}", None),  # a token that names no node (issued before tokens named theirs)
    ("POST", "/cancel", None),
    ("DELETE", "", None),
]


async def closed_with(url: str) -> tuple[int, str]:
    """The close code and reason the gateway answers a viewer with (before any RFB)."""
    async with connect(url, subprotocols=["binary"], open_timeout=30) as ws:  # type: ignore[list-item]
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None, "closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def refused_everywhere(http: httpx.AsyncClient, sid: str, owner: str, address: str, unbound: str) -> None:
    expected = {
        "error": f"[node] session {sid} lives on node {owner}; call that node ({address}) or go through an edge",
        "hop": "node",
        "node": owner,
    }
    for method, path, body in ROUTES:
        url = path.replace("{id}", sid) if path.startswith("/api/") else f"/api/auth/session/{sid}{path}"
        url = url.replace("{unbound}", unbound)
        r = await http.request(method, url, json=body)
        assert r.status_code == 421, (method, url, r.status_code, r.text)
        assert r.json() == expected, (method, url, r.text)
    # the viewer page (HTML for a person): 421 too, naming the owner, instead of a page whose WebSocket is refused
    page = await http.get(f"/api/auth/session/{sid}/novnc", params={"token": unbound})
    assert page.status_code == 421 and f"node {owner}" in page.text and address in page.text, page.text


async def unharmed(ctl: Running, http: httpx.AsyncClient, live: Live, pid: int | None) -> None:
    body = (await http.get(f"/api/auth/session/{live.session_id}")).json()
    assert body["status"] == "ready", body
    sb = ctl.ctl.service.sandboxes.get(live.session_id)
    assert sb is not None and sb.pid == pid and await ctl.ctl.service.sandboxes.alive(live.session_id)
    frame = await first_frame(live.ws_url(ctl), 60)  # its own node still streams its own desktop
    assert frame.init.width > 0 and frame.rects


async def test_every_route_on_the_wrong_node_is_refused_and_nothing_is_harmed(
    make_settings: Callable[..., Settings], data_dir: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    shared = {
        "HEARTH_DATABASE_URL": database_url or f"sqlite:///{data_dir}/shared.db",
        "HEARTH_TOKEN_SECRET": "k1:" + secrets.token_hex(24),  # one key ring for the cluster
        "HEARTH_MASTER_KEY": secrets.token_hex(32),
        "HEARTH_CHROMIUM": "false",
        "HEARTH_RATE_LIMIT": "0",
    }
    (data_dir / "n1").mkdir(mode=0o711)
    (data_dir / "n2").mkdir(mode=0o711)
    s1 = make_settings(**shared, HEARTH_NODE_ID="n1", HEARTH_DATA_DIR=str(data_dir / "n1"))
    s2 = make_settings(**shared, HEARTH_NODE_ID="n2", HEARTH_DATA_DIR=str(data_dir / "n2"))
    assert s1.api_keys == s2.api_keys
    async with (
        running_controller(s1) as n1,
        running_controller(s2) as n2,
        httpx.AsyncClient(base_url=n1.base_url, headers=n1.headers, timeout=60) as http1,
        httpx.AsyncClient(base_url=n2.base_url, headers=n2.headers, timeout=60) as http2,
    ):
        red = await start_ready(http1, s1, "red")
        blue = await start_ready(http2, s2, "blue")
        assert red.slot == blue.slot == 0, "each node's session is in its own slot 0 (the issue's setup)"
        pids = {}
        for ctl, live in ((n1, red), (n2, blue)):
            sb = ctl.ctl.service.sandboxes.get(live.session_id)
            assert sb is not None
            pids[live.session_id] = sb.pid
        addr1 = await n1.ctl.db.run(lambda s: address_of(s, "n1"))
        addr2 = await n1.ctl.db.run(lambda s: address_of(s, "n2"))
        assert addr1 and addr2 and addr1 != addr2

        # -- every session route, on the wrong node: 421 naming the owner (both ways round) ---------------------
        unbound = SignedTokens(parse_ring(shared["HEARTH_TOKEN_SECRET"]))  # names no node
        await refused_everywhere(http1, blue.session_id, "n2", addr2, unbound.issue(blue.session_id, Scope.VIEW, 60))
        await refused_everywhere(http2, red.session_id, "n1", addr1, unbound.issue(red.session_id, Scope.VIEW, 60))

        # -- the viewer WebSocket on the wrong node: 4421 naming the owner, its own node's token or not ----------
        code, reason = await closed_with(blue.ws_url(n1))
        assert code == 4421 and "node n2" in reason and addr2 in reason, (code, reason)
        code, reason = await closed_with(red.ws_url(n2))
        assert code == 4421 and "node n1" in reason, (code, reason)

        # -- a genuine token n2 issued, for n1's own session, is refused by n1 (4401 naming both nodes) ---------
        foreign = n2.ctl.tokens.issue(red.session_id, Scope.CONTROL, 60)
        code, reason = await closed_with(red.ws_url(n1, foreign))
        assert code == 4401 and "node n2" in reason and "n1" in reason, (code, reason)
        page = await http1.get(f"/api/auth/session/{red.session_id}/novnc", params={"token": foreign})
        assert page.status_code == 401, page.text

        # -- both desktops and both sessions are unharmed -------------------------------------------------------
        await unharmed(n1, http1, red, pids[red.session_id])
        await unharmed(n2, http2, blue, pids[blue.session_id])

        # -- every refusal is in the log: session id, owning node, this node (never the token) ------------------
        refusals = [r for r in caplog.records if r.getMessage() == "refused: the session lives on another node"]
        seen = {
            (getattr(r, "session_id", None), getattr(r, "owner_node", None), getattr(r, "this_node", None))
            for r in refusals
        }
        assert seen == {(blue.session_id, "n2", "n1"), (red.session_id, "n1", "n2")}, seen
        assert len(refusals) == 2 * (len(ROUTES) + 2), [getattr(r, "refused", None) for r in refusals]
        tokens = [r for r in caplog.records if r.getMessage() == "viewer token for another node refused"]
        assert [
            (getattr(r, "session_id", None), getattr(r, "issued_for", None), getattr(r, "this_node", None))
            for r in tokens
        ] == [(red.session_id, "n2", "n1")]
        for record in (*refusals, *tokens):  # as the controller's JSON log writes them (nothing redacted away)
            line = json.loads(JsonFormatter().format(record))
            assert "<redacted>" not in line.values() and line["this_node"] in ("n1", "n2"), line
        controllers = [r for r in caplog.records if r.name.startswith(("hearth", "uvicorn"))]  # not the test's httpx
        assert not any(foreign in r.getMessage() or foreign in str(vars(r)) for r in controllers)

        # -- another node's CLI sandbox (its row, as a first start writes it): 421 naming that node, logged --------
        await n2.ctl.db.run(
            lambda s: s.add(CliSandboxRow(user_id="erin", node_id="n2", owner_id="cli-erin", home="/nonexistent"))
        )
        r = await http1.delete("/api/users/erin/cli-sandbox")
        assert r.status_code == 421 and r.json()["node"] == "n2" and "node n2" in r.json()["error"], r.text
        assert any(
            r.getMessage() == "refused: the CLI sandbox lives on another node"
            and (getattr(r, "owner_node", None), getattr(r, "this_node", None)) == ("n2", "n1")
            for r in caplog.records
        )

        # -- and each node still acts on its own: cancel on the right node ends only that session --------------
        assert (await http2.post(f"/api/auth/session/{blue.session_id}/cancel")).json()["status"] == "cancelled"
        assert (await http1.get(f"/api/auth/session/{red.session_id}")).json()["status"] == "ready"
        assert await n1.ctl.service.sandboxes.alive(red.session_id)
