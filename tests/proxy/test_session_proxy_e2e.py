"""A proxy that refuses hearth's credentials fails the session within seconds naming the proxy hop — through a real
controller, sandbox, agent, Chromium and the example CLI: the upstream proxy (hearth/standins/proxyserver.py) runs in
the controller's fabric namespace on BRIDGE_IP (a port opened to sandboxes) and answers 407 to the password hearth
was given. Not at the flow's timeout (600 s here); the reason names the proxy and its fix, never the password; the
person reads plain words; the user's port is the one GET /api/users/{id}/egress shows. A proxy that is down (nothing
on the user's port) fails the session the same way."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.serving.local import free_port
from tests.conftest import running_controller
from tests.waits import wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]
WAIT = 90.0  # the test's bound: booting the sandbox and Chromium on a busy host, then the proxy's few seconds
WRONG = "not-the-password-9"


async def test_a_proxy_refusing_the_credentials_fails_the_session_naming_the_proxy(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    bridge = str(make_settings().bridge_ip)  # the proxy listens there, in the fabric namespace
    settings = make_settings(
        HEARTH_EXAMPLE_ISSUER="http://idp.proxied.test:9400",
        OAUTH_FLOW_TIMEOUT="600",
        HEARTH_FABRIC_OPEN_PORTS=str(port),
        HEARTH_EGRESS_PROXY=f"http://alice:{WRONG}@{bridge}:{{port}}",
        HEARTH_EGRESS_PROXY_PORTS=str(port),
    )
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        proxy = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", settings.fabric_netns, sys.executable, "-m", "hearth.standins.proxyserver",
            "--listen", str(settings.bridge_ip), "--ports", str(port),
            env={**os.environ, "PROXY_USER": "alice:the-right-one"}, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proxy.stdout is not None and b"listening" in await asyncio.wait_for(proxy.stdout.readline(), 30)
            r = await http.post("/api/auth/start", json={"user_id": "pat", "provider": "example"})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            body = await wait_session(http, sid, lambda _: False, "the session's end", WAIT)
            assert body["status"] == "failed" and body["hop"] == "proxy", body  # far below the 600 s flow timeout
            reason = str(body["reason"])
            assert reason.startswith("[proxy]") and "refused hearth's credentials" in reason, reason
            assert f"{bridge}:{port}" in reason and "— fix: check HEARTH_EGRESS_PROXY" in reason
            assert body["message"] == "This service cannot connect to Example right now. Please try again later."
            events = (await http.get(f"/api/auth/session/{sid}/events")).json()
            everything = r.text + str(body) + str(events)
            assert WRONG not in everything and "the-right-one" not in everything
            egress = (await http.get("/api/users/pat/egress")).json()
            assert egress == {"user_id": "pat", "proxy": {"host": bridge, "port": port}}
        finally:
            proxy.terminate()
            await asyncio.wait_for(proxy.wait(), 10)


async def test_a_proxy_that_is_down_fails_the_session_naming_the_proxy(
    make_settings: Callable[..., Settings],
) -> None:
    """Nothing listens on the user's port of the upstream proxy (its host is up: BRIDGE_IP, the port open to
    sandboxes): the session fails naming the proxy hop and where it was tried, not at the 600 s flow timeout."""
    port = free_port()
    bridge = str(make_settings().bridge_ip)
    settings = make_settings(
        HEARTH_EXAMPLE_ISSUER="http://idp.proxied.test:9400",
        OAUTH_FLOW_TIMEOUT="600",
        HEARTH_FABRIC_OPEN_PORTS=str(port),
        HEARTH_EGRESS_PROXY=f"http://alice:{WRONG}@{bridge}:{{port}}",
        HEARTH_EGRESS_PROXY_PORTS=str(port),
    )
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        r = await http.post("/api/auth/start", json={"user_id": "dana", "provider": "example"})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        body = await wait_session(http, sid, lambda _: False, "the session's end", WAIT)
        assert body["status"] == "failed" and body["hop"] == "proxy", body  # far below the 600 s flow timeout
        reason = str(body["reason"])
        assert reason.startswith("[proxy]") and f"{bridge}:{port}" in reason, reason
        events = (await http.get(f"/api/auth/session/{sid}/events")).json()
        assert WRONG not in r.text + str(body) + str(events)
