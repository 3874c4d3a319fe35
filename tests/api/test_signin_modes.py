"""Sign-in modes through the real API and a real controller: modes are checked against the provider, a direct-mode
sandbox runs no desktop (only the agent and the CLI), its viewer WebSocket is closed with 4410, and pasted codes are
checked before anything is sent. Nothing is left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hearth.agentlink.client import http_json
from hearth.config import Settings
from hearth.providers.model import FlowName
from hearth.sandbox.netns import pids_in_netns
from tests import rawws
from tests.conftest import running_controller
from tests.live import descendants, leaks
from tests.signinkit import idp_env, running_idp
from tests.waits import wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]
IDP_PORT = 9401
DESKTOP = {"Xvnc", "Xvfb", "x11vnc", "openbox", "chromium"}


def process_names(netns: str) -> set[str]:
    names = set()
    for pid in pids_in_netns(netns):
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            pass  # exited meanwhile
    return names


async def test_modes_are_checked_and_a_direct_sandbox_has_no_desktop(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**idp_env(IDP_PORT))
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        before = await asyncio.to_thread(descendants)
        async with running_idp(settings, IDP_PORT, auto_approve=True):
            example = ctl.ctl.providers["example"]
            ctl.ctl.providers["loopback_only"] = example.model_copy(
                update={"name": "loopback_only", "flows": {FlowName.LOOPBACK: example.flows[FlowName.LOOPBACK]}}
            )

            # Modes are checked before anything is created.
            r = await http.post("/api/auth/start", json={"user_id": "m", "provider": "loopback_only", "mode": "direct"})
            assert r.status_code == 400 and "it can: remote_browser" in r.json()["error"], r.text
            r = await http.post("/api/auth/start", json={"user_id": "m", "provider": "example", "mode": "fax"})
            assert r.status_code == 400 and "valid modes: remote_browser, direct" in r.json()["error"], r.text
            r = await http.post("/api/auth/start", json={"user_id": "m", "mode": "direct"})
            assert r.status_code == 400 and "give a provider" in r.json()["error"], r.text
            assert await ctl.ctl.service.records.list_active() == []

            # A direct session: the agent (and the CLI) only; ready once the agent answers.
            r = await http.post("/api/auth/start", json={"user_id": "m", "provider": "example", "mode": "direct"})
            assert r.status_code == 201, r.text
            started = r.json()
            sid, token = started["session_id"], started["viewer_token"]
            body = await wait_session(http, sid)
            assert body["status"] in ("ready", "awaiting_user"), body
            assert body["mode"] == "direct"
            timings = body["timings"]
            assert isinstance(timings, dict) and "agent" in timings and not {"display", "vnc", "rfb"} & set(timings)
            slot = int(str(body["sandbox_ip"]).rsplit(".", 1)[1]) - 2
            names = await asyncio.to_thread(process_names, f"{settings.fabric_netns}-s{slot}")
            assert "python3" in names and not DESKTOP & names, names

            # The signin callback (agent → controller, inside the fabric) takes only this sandbox's secret and a
            # well-formed prompt.
            async def push(body: dict[str, object], secret: str) -> int:
                status, _ = await http_json(
                    settings.fabric_netns,
                    str(settings.bridge_ip),
                    settings.callback_port,
                    "POST",
                    f"/agent/v1/sessions/{sid}/signin",
                    5,
                    body,
                    secret,
                )
                return status

            good = {"flow": "paste_code", "url": "https://idp.test/authorize?x=1", "awaiting_code": True}
            assert await push(good, "not-the-secret-0000") == 401
            secret = ctl.ctl.service.secret_of(sid)
            assert secret is not None
            assert await push({**good, "url": "javascript:alert(1)"}, secret) == 400
            assert await push({**good, "flow": "fax"}, secret) == 400

            # `hearth doctor` walks the path up to the agent; the desktop hops do not apply.
            report = (await http.get(f"/api/diagnostics/{sid}")).json()
            checks = {c["name"]: c for c in report["checks"]}
            assert report["first_failure"] is None and checks["agent"]["ok"] is True, report
            assert checks["vnc"]["ok"] is None and "no desktop" in checks["vnc"]["evidence"], checks["vnc"]
            assert checks["rfb"]["ok"] is None and checks["gateway"]["ok"] is None

            # No viewer WebSocket for a session without a desktop: an explicit close naming why.
            host, port = settings.listen_host_port
            got = await asyncio.to_thread(
                rawws.exchange, host, port, f"/api/auth/session/{sid}/novnc/websock?token={token}", []
            )
            assert got.close_code == 4410 and "own browser" in got.close_reason, got.frames

            # The code endpoint: authorised by a control viewer token or an API key; bad codes never leave.
            code_path = f"/api/auth/session/{sid}/code"
            async with httpx.AsyncClient(base_url=ctl.base_url, timeout=30) as anon:
                assert (await anon.post(code_path, json={"code": "abc"})).status_code == 401
                view = (await http.post(f"/api/auth/session/{sid}/token", json={"scope": "view"})).json()
                r = await anon.post(f"{code_path}?token={view['viewer_token']}", json={"code": "abc"})
                assert r.status_code == 403, r.text
                for bad in ("abc\r\nrm -rf ~", "", "x" * 513, "\x1b[2J"):
                    r = await anon.post(f"{code_path}?token={token}", json={"code": bad})
                    assert r.status_code == 400, (bad, r.text)
                r = await http.post(code_path, json={"code": "a\x00b"})
                assert r.status_code == 400 and "control characters" in r.json()["error"]
                # A device-code sign-in takes no pasted code.
                r = await anon.post(f"{code_path}?token={token}", json={"code": "ABCD-EFGH"})
                assert r.status_code == 409, r.text
            events = (await http.get(f"/api/auth/session/{sid}/events")).json()
            assert not [e for e in events if e["name"] == "code submitted"]

            assert (await http.post(f"/api/auth/session/{sid}/cancel")).json()["status"] == "cancelled"
            r = await http.post(code_path, json={"code": "ABCD-EFGH"})
            assert r.status_code == 409 and "cancelled" in r.json()["error"]
        left = await leaks(ctl, before)
        assert left.total == 0, left


async def test_an_open_sign_in_page_keeps_a_direct_session_from_idling_out(
    make_settings: Callable[..., Settings],
) -> None:
    """A direct-mode session has no viewer WebSocket; the person's open page (its status stream) is its activity."""
    settings = make_settings(**idp_env(IDP_PORT), HEARTH_IDLE_TIMEOUT="2")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with running_idp(settings, IDP_PORT, auto_approve=True):
            r = await http.post("/api/auth/start", json={"user_id": "i", "provider": "example", "mode": "direct"})
            started = r.json()
            sid = started["session_id"]
            body = await wait_session(http, sid)
            assert body["status"] in ("ready", "awaiting_user"), body
            status_url = f"/api/auth/session/{sid}/status?token={started['viewer_token']}"
            keepalives = 0
            async with httpx.AsyncClient(base_url=ctl.base_url, timeout=30) as page:
                async with page.stream("GET", status_url) as stream:
                    async for line in stream.aiter_lines():
                        keepalives += line.startswith(": keepalive")
                        if keepalives >= 6:  # three idle timeouts with the page open
                            break
            body = (await http.get(f"/api/auth/session/{sid}")).json()
            assert body["status"] == "awaiting_user", body
            for _ in range(300):  # page closed: the session idles out (housekeeping runs every 2 s)
                body = (await http.get(f"/api/auth/session/{sid}")).json()
                if body["status"] != "awaiting_user":
                    break
                await asyncio.sleep(0.1)
            assert body["status"] == "expired" and "idle" in str(body["reason"]), body
