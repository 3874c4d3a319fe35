"""Admission control end to end: with one boot slot, sessions created at once wait `queued` with a position in the
API, boot one after another and all become ready (real controller, real sandboxes, real viewers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.rfb.ws import first_frame
from tests.conftest import running_controller
from tests.waits import wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]


async def test_a_storm_waits_in_line_and_every_session_becomes_ready(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_MAX_BOOTS="1", HEARTH_CHROMIUM="false", MAX_SESSIONS_PER_USER="1")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        answers = await asyncio.gather(*(http.post("/api/auth/start", json={"user_id": f"q{i}"}) for i in range(3)))
        started = [r.json() for r in answers]
        assert [r.status_code for r in answers] == [201] * 3, [r.text for r in answers]
        queued = sorted((b["queue_position"], b["session_id"]) for b in started if b["status"] == "queued")
        assert [p for p, _ in queued] == [1, 2], started  # one boots, two wait: positions 1 and 2
        # A viewer of the last in line waits for its turn (no 4408) and gets a frame.
        last = next(b for b in started if b["session_id"] == queued[-1][1])
        url = f"{ctl.ws_base}/api/auth/session/{last['session_id']}/novnc/websock?token={last['viewer_token']}"
        frame = await first_frame(url, timeout=90)
        assert frame.init.width > 0
        for b in started:
            body = await wait_session(http, b["session_id"])
            assert body["status"] == "ready" and body["queue_position"] is None, body
        events = (await http.get(f"/api/auth/session/{queued[0][1]}/events")).json()
        assert [e["name"] for e in events if e["kind"] == "state"] == ["queued", "starting", "ready"]
        assert "queued" in {e["name"] for e in events if e["kind"] == "stage"}
        assert ctl.ctl.service.boot_queue.booting == 0 and ctl.ctl.service.boot_queue.waiting == 0
