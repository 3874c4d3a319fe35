"""The warm pool end to end (real controller, real netns sandboxes, real viewers): pre-started sandboxes are handed
out personalised (new agent secret; the pool secret refused afterwards), concurrent starts never share one, the pool
refills, too-old sandboxes are recycled and nothing is left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from hearth.agentlink.client import http_json
from hearth.config import Settings
from hearth.rfb.ws import first_frame
from hearth.session.pool import WarmPool
from tests.conftest import Running, running_controller
from tests.live import descendants, leaks
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def filled(pool: WarmPool, mode: str, n: int) -> bool:
    """The probe of the pool's wait: `n` ready sandboxes of `mode` (else the pool's summary, as its last look)."""
    assert len(pool.ready(mode)) >= n, pool.summary()
    return True


async def agent_status(ctl: Running, ip: str, secret: str) -> int:
    s = ctl.settings
    status, _ = await http_json(s.fabric_netns, ip, s.agent_port, "GET", "/v1/login", 5, None, secret)
    return status


async def test_pool_hand_out_refill_recycle(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_POOL_SIZE="remote_browser:2", HEARTH_CHROMIUM="false")
    before = await asyncio.to_thread(descendants)
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        pool = ctl.ctl.service.pool
        mgr = ctl.ctl.service.sandboxes
        await eventually(lambda: filled(pool, "remote_browser", 2), 120, "two warm browsers", interval=0.1)
        pooled = {str(sb.spec.slot.ip): sb.secret for sb in pool.ready("remote_browser")}

        # Two starts at once: both served by the pool, never the same sandbox.
        answers = await asyncio.gather(*(http.post("/api/auth/start", json={"user_id": f"p{i}"}) for i in range(2)))
        assert [r.status_code for r in answers] == [201, 201], [r.text for r in answers]
        bodies = [await wait_session(http, r.json()["session_id"]) for r in answers]
        assert [b["status"] for b in bodies] == ["ready", "ready"], bodies
        ips = {str(b["sandbox_ip"]) for b in bodies}
        assert ips == set(pooled), (ips, list(pooled))  # the two pooled sandboxes, one each
        assert pool.hits == 2 and pool.misses == 0
        for b in bodies:
            sid = str(b["session_id"])
            events = (await http.get(f"/api/auth/session/{sid}/events")).json()
            assert "pool" in {e["name"] for e in events if e["kind"] == "stage"}
            # The viewer gets frames from the handed-out desktop.
            token = next(r.json()["viewer_token"] for r in answers if r.json()["session_id"] == sid)
            frame = await first_frame(f"{ctl.ws_base}/api/auth/session/{sid}/novnc/websock?token={token}", timeout=30)
            assert frame.init.width > 0
            # Personalised: the new secret is accepted, the pool's refused.
            new = mgr.secret_of(sid)
            assert new is not None and new != pooled[str(b["sandbox_ip"])]
            assert await agent_status(ctl, str(b["sandbox_ip"]), new) == 200
            assert await agent_status(ctl, str(b["sandbox_ip"]), pooled[str(b["sandbox_ip"])]) == 401

        # Refill: the pool boots two fresh sandboxes in the background.
        await eventually(lambda: filled(pool, "remote_browser", 2), 120, "two warm browsers", interval=0.1)
        assert {str(sb.spec.slot.ip) for sb in pool.ready("remote_browser")}.isdisjoint(ips)

        # Max idle: a pooled sandbox past HEARTH_POOL_MAX_IDLE is recycled (its age set back instead of waiting).
        old = pool.ready("remote_browser")[0]
        for _ in range(200):  # its refill task records the age just after the sandbox turned pooled
            if old.owner in pool._since:
                break
            await asyncio.sleep(0.05)
        pool._since[old.owner] -= settings.pool_max_idle + 1
        assert await pool.recycle() == 1
        assert mgr.get(old.owner) is None

        for b in bodies:
            assert (await http.delete(f"/api/auth/session/{b['session_id']}")).status_code in (200, 204)
        await pool.drain()
        for b in bodies:
            await wait_session(http, str(b["session_id"]))
        left = await leaks(ctl, before)
        assert left.total == 0, left
