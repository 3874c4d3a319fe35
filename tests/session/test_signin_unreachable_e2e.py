"""An unreachable sign-in page (issue 21, item 3), through a real controller, sandbox, agent, Chromium and the
example CLI: the provider's host does not resolve. The agent probes the page it opened in the sandbox's browser
(DNS, TCP, TLS: hearth_agent/pageprobe.py) and the session fails within seconds — not at the flow's timeout —
naming the hop (`dns`) with the technical detail in the reason and the events, and the person's words in the
API's message: "The Example sign-in page cannot be reached from here"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from tests.conftest import running_controller

pytestmark = [pytest.mark.netns, pytest.mark.slow]
HOST = "signin.hearth-test.invalid"  # .invalid never resolves (RFC 2606)
WAIT = 90.0  # the test's bound: booting the sandbox and Chromium on a busy host, then the probe's few seconds


async def test_a_sign_in_page_that_does_not_resolve_fails_naming_dns(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_EXAMPLE_ISSUER=f"http://{HOST}:9400", OAUTH_FLOW_TIMEOUT="600")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        r = await http.post("/api/auth/start", json={"user_id": "uma", "provider": "example"})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        deadline = time.monotonic() + WAIT
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            body = (await http.get(f"/api/auth/session/{sid}")).json()
            if body["status"] in ("completed", "failed", "cancelled", "expired"):
                break
            await asyncio.sleep(0.1)
        assert body["status"] == "failed", body  # within WAIT, far below the 600 s flow timeout
        assert body["hop"] == "dns", body
        reason = str(body["reason"])
        assert reason.startswith(f"[dns] the sign-in page cannot be reached from the sandbox: {HOST} does not resolve")
        assert "— fix:" in reason and "/authorize?" not in reason  # the fix named; never the full sign-in URL
        assert body["message"] == "The Example sign-in page cannot be reached from here. Please try again later."
        events = (await http.get(f"/api/auth/session/{sid}/events")).json()
        names = [e["name"] for e in events]
        assert "agent:page_unreachable" in names and "agent:login_failed" not in names, names
        assert "awaiting_user" in names  # the page was opened: the probe is about loading it
        at = {e["name"]: e["at"] for e in events}
        print(f"page opened at {at['awaiting_user']}, session failed at {at['failed']}")  # measured, not asserted
