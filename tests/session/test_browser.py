"""Browsers after desktops (HEARTH_BROWSER_START=queued, the default), with real sandboxes and real Chromium: every
waiting desktop comes up before any browser starts; each browser then starts and the session's timings gain
`browser`; a page to show starts a waiting browser at once, on that page."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.agentlink.client import AgentClient
from hearth.config import Settings
from hearth.lifecycle.sandbox import Final, Kind
from hearth.sandbox.procs import pids_in_netns
from tests.conftest import running_controller
from tests.live import start_ready
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def chromium_cmdlines(netns: str) -> list[str]:
    out = []
    for pid in pids_in_netns(netns):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("chrom"):
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


async def test_every_waiting_desktop_comes_up_before_any_browser_starts(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(HEARTH_MAX_BOOTS="1", HEARTH_SCREEN="800x600x24", HEARTH_RATE_LIMIT="0")
    assert settings.browser_start == "queued"
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
    ):
        lives = await asyncio.gather(*(start_ready(http, settings, f"storm-{i}") for i in range(3)))

        async def bodies() -> list[dict[str, Any]] | None:
            got = [(await http.get(f"/api/auth/session/{x.session_id}")).json() for x in lives]
            return got if all("browser" in b["timings"] for b in got) else None

        views = await eventually(bodies, 90, "every session's browser shown", interval=0.2)

        def at(body: dict[str, Any], stage: str) -> datetime:
            return datetime.fromisoformat(body["created_at"]) + timedelta(seconds=body["timings"][stage])

        # Every desktop admitted before the first browser started was up before it (a create that reached the API
        # only after the queue had emptied — a slow request under load — may well come after a browser).
        first_browser = min(at(b, "browser") for b in views)
        waiting = [b for b in views if datetime.fromisoformat(b["created_at"]) < first_browser]
        last_desktop = max(at(b, "rfb") for b in waiting)
        assert first_browser >= last_desktop, "a browser started while a desktop still waited for its boot"
        for live in lives:
            assert chromium_cmdlines(live.netns), f"no Chromium runs in {live.netns}"


async def test_a_page_to_show_starts_a_waiting_browser_at_once_on_that_page(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(HEARTH_SCREEN="800x600x24")
    async with running_controller(settings) as ctl:
        mgr = ctl.ctl.service.sandboxes
        owner = "browser-test"
        lease = await mgr.ipam.acquire(owner)
        sb = await mgr.boot(owner, Kind.SESSION, lease.slot)  # no session: nobody asks for its browser
        try:
            agent = AgentClient(settings.fabric_netns, str(sb.spec.slot.ip), sb.spec.agent_port, sb.spec.secret)
            health = await agent.call("GET", "/health")
            assert health["services"]["chromium"]["state"] == "waiting"
            assert not chromium_cmdlines(sb.spec.slot.netns)

            page = "http://signin.hearth.invalid/authorize?step=1"
            assert await agent.call("POST", "/v1/open-url", {"url": page}) == {"opened": True}

            async def running() -> bool:
                body = await agent.call("GET", "/health")
                return bool(body["services"]["chromium"]["state"] == "running")

            await eventually(running, 90, "Chromium running after the page asked for it", interval=0.2)
            assert any(page in c for c in chromium_cmdlines(sb.spec.slot.netns)), "it did not start on the page"
            out = await agent.call("POST", "/v1/browser", timeout=30)
            assert out["started"] is False and out["state"] == "running" and out["shown"] is not False
        finally:
            await mgr.end(owner, Final.DONE)
        assert not pids_in_netns(sb.spec.slot.netns)


async def test_a_ready_desktops_browser_waits_for_its_first_frame(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The browser's turn is asked for once the session's first frame went out (Chromium's start took the CPU that
    frame needed): ready and unviewed, the desktop's browser still waits; the first viewer's frame starts it."""
    from hearth.rfb.ws import first_frame
    from hearth.session import browser as browser_module

    monkeypatch.setattr(browser_module, "FRAME_GRACE", 600.0)  # only the first frame can start it here
    settings = make_settings(HEARTH_SCREEN="800x600x24")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
    ):
        live = await start_ready(http, settings, "framed")
        sb = ctl.ctl.service.sandboxes.get(live.session_id)
        assert sb is not None
        agent = AgentClient(settings.fabric_netns, str(sb.spec.slot.ip), sb.spec.agent_port, sb.spec.secret)
        await asyncio.sleep(1.0)  # a browser started at ready would be starting by now
        health = await agent.call("GET", "/health")
        assert health["services"]["chromium"]["state"] == "waiting", health
        assert not chromium_cmdlines(live.netns)
        url = f"{ctl.ws_base}/api/auth/session/{live.session_id}/novnc/websock?token={live.viewer_token}"
        frame = await first_frame(url, 30)
        assert frame.rects

        async def shown() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get(f"/api/auth/session/{live.session_id}")).json()
            return body if "browser" in body["timings"] else None

        await eventually(shown, 60, "the browser shown after the first frame", interval=0.2)
        assert chromium_cmdlines(live.netns)
