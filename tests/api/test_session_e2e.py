"""End to end over real processes, sockets and namespaces: API → session → netns sandbox → gateway → RFB."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.gateway.tokens.base import Scope
from hearth.rfb.ws import first_frame
from hearth.store.models import SessionRow
from tests.conftest import Running, running_controller
from tests.waits import wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]


async def close_of(url: str) -> tuple[int, str]:
    async with connect(url, subprotocols=["binary"]) as ws:  # type: ignore[list-item]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


def leftovers(settings: Settings, slot_index: int) -> list[str]:
    found = []
    netns_name = f"{settings.fabric_netns}-s{slot_index}"
    if netlink.netns_exists(netns_name):
        found.append(f"netns {netns_name}")
    if netlink.netns_exists(settings.fabric_netns):
        with netlink.ns(settings.fabric_netns) as fab:
            if netlink.link_index(fab, f"hearth-v{slot_index}") is not None:
                found.append(f"veth hearth-v{slot_index}")
    workdir = Path(settings.data_dir) / "sandboxes" / netns_name
    if workdir.exists():
        found.append(f"dir {workdir}")
    return found


async def test_session_streams_a_desktop_and_cancels_clean(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with running_controller(settings) as ctl, httpx.AsyncClient(base_url=ctl.base_url, timeout=30) as http:
        assert (await http.get("/health")).json()["ok"] is True
        assert (await http.post("/api/auth/start", json={"user_id": "u1"})).status_code == 401
        bad = await http.post("/api/auth/start", json={"user_id": "u1"}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401

        t0 = time.monotonic()
        r = await http.post("/api/auth/start", json={"user_id": "u1"}, headers=ctl.headers)
        assert r.status_code == 201, r.text
        started = r.json()
        sid = started["session_id"]
        assert started["status"] == "starting"
        assert started["viewer_url"].endswith(f"/api/auth/session/{sid}/novnc?token={started['viewer_token']}")

        # The viewer may connect before the sandbox is ready: the gateway waits instead of failing.
        ws_url = f"{ctl.ws_base}/api/auth/session/{sid}/novnc/websock?token={started['viewer_token']}"
        frame = await first_frame(ws_url, timeout=90)
        elapsed = time.monotonic() - t0
        print(f"\ncreate→first-frame: {elapsed:.3f}s (ws connect {frame.connect_s:.3f}s)")
        assert frame.init.width == 1280 and frame.init.height == 800
        assert frame.non_blank, "framebuffer is blank"

        body = (await http.get(f"/api/auth/session/{sid}", headers=ctl.headers)).json()
        assert body["status"] == "ready"
        for stage in ("lease", "namespace", "process", "display", "vnc", "rfb"):
            assert stage in body["timings"], body["timings"]
        assert body["timings"]["rfb"] >= body["timings"]["display"] >= body["timings"]["namespace"]
        assert body["sandbox_ip"] == str(ctl.ctl.service.ipam.slot(0).ip)
        agent_pid = body_pid(ctl, sid)

        # Bad token → 4401, unknown session → 4404, both explicit.
        code, reason = await close_of(f"{ctl.ws_base}/api/auth/session/{sid}/novnc/websock?token=forged")
        assert code == 4401 and "token" in reason
        other = ctl.ctl.tokens.issue("no-such-session", Scope.CONTROL, 60)
        code, reason = await close_of(f"{ctl.ws_base}/api/auth/session/no-such-session/novnc/websock?token={other}")
        assert code == 4404

        # A connected viewer is closed with 1000 and a reason when the session is cancelled.
        async with connect(ws_url, subprotocols=["binary"]) as ws:  # type: ignore[list-item]
            assert (await asyncio.wait_for(ws.recv(), 10))[:4] == b"RFB "
            cancelled = await http.post(f"/api/auth/session/{sid}/cancel", headers=ctl.headers)
            assert cancelled.json()["status"] == "cancelled"
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            assert ws.close_code == 1000

        # Nothing left: namespace, veth, lease, directory, process.
        assert await asyncio.to_thread(leftovers, settings, 0) == []
        assert not Path(f"/proc/{agent_pid}").exists(), "sandbox process survived cancel"
        assert await ctl.ctl.service.ipam.leases() == []
        events = (await http.get(f"/api/auth/session/{sid}/events", headers=ctl.headers)).json()
        assert [e["name"] for e in events if e["kind"] == "state"] == ["starting", "ready", "cancelled"]
        # cancelling again is harmless
        assert (await http.post(f"/api/auth/session/{sid}/cancel", headers=ctl.headers)).json()["status"] == "cancelled"
        assert (await http.delete(f"/api/auth/session/{sid}", headers=ctl.headers)).json()["status"] == "cancelled"


def body_pid(ctl: Running, sid: str) -> int:
    row = ctl.ctl.db.call(lambda db: db.get(SessionRow, sid))
    assert row is not None and row.pid
    return int(row.pid)


async def test_pool_exhausted_is_503_with_nothing_created(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(IP_POOL_START="192.168.100.2", IP_POOL_END="192.168.100.2", HEARTH_CHROMIUM="false")
    async with running_controller(settings) as ctl, httpx.AsyncClient(base_url=ctl.base_url, timeout=30) as http:
        first = await http.post("/api/auth/start", json={"user_id": "a"}, headers=ctl.headers)
        assert first.status_code == 201
        second = await http.post("/api/auth/start", json={"user_id": "b"}, headers=ctl.headers)
        assert second.status_code == 503
        assert "IP pool exhausted" in second.json()["error"]
        active = await ctl.ctl.service.records.list_active()
        assert [v.user_id for v in active] == ["a"]
        http.headers.update(ctl.headers)
        body = await wait_session(http, first.json()["session_id"], timeout=90)
        assert body["status"] == "ready", body
