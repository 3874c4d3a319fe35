"""Direct-mode sign-in end to end with the `example` provider: a sandbox without a desktop runs only the agent and
the example CLI; the controller shows the person the sign-in link (and device code) through the API, takes a pasted
code (a wrong one first: the CLI's own error comes back, and the person retries) and the credentials end up
captured → sealed → delivered → completed, with nothing left behind.

The person's own browser is played by plain HTTP requests to the example IdP on BRIDGE_IP — the only thing stood in
for here. It runs on the loopback driver (hearth/sandbox/loopback.py): the real agent and CLI, no root."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from ipaddress import IPv4Network

import httpx
import pytest

from hearth.config import Settings
from hearth.signin import wording
from tests.conftest import Running, loopback_env, running_controller
from tests.live import descendants, leaks, signin_of
from tests.signinkit import approve_and_read_code, browse, idp_env, issuer, running_idp
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.slow]
IDP_PORT = 9404
STATES = ["starting", "ready", "awaiting_user", "credentials_captured", "delivered", "completed"]


async def finish(ctl: Running, http: httpx.AsyncClient, sid: str) -> list[dict[str, object]]:
    body = await wait_session(http, sid, lambda b: False, "completion")
    assert body["status"] == "completed", body

    async def forgotten() -> bool:  # once the session ended (its end hook runs right after the state is stored)
        return (await http.get(f"/api/auth/session/{sid}")).json()["signin"] is None

    await eventually(forgotten, 10, "the sign-in forgotten")
    events: list[dict[str, object]] = (await http.get(f"/api/auth/session/{sid}/events")).json()
    assert [e["name"] for e in events if e["kind"] == "state"] == STATES
    files = await ctl.ctl.vault.open("dora", "example")
    assert files is not None and json.loads(files[0].data)["access_token"].startswith("ex-at-")
    path = ctl.ctl.clis.home_of("dora") / ".example" / "credentials.json"
    assert json.loads(path.read_text()) == json.loads(files[0].data)
    return events


async def test_direct_sign_in_with_device_code_and_with_paste_code(make_settings: Callable[..., Settings]) -> None:
    env = loopback_env()
    bridge = str(IPv4Network(env["INTERNAL_NETWORK"]).network_address + 1)
    settings = make_settings(**env, **idp_env(IDP_PORT, bridge))
    netns, ISSUER = settings.dial_netns, issuer(IDP_PORT, bridge)
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        before = await asyncio.to_thread(descendants)
        async with running_idp(settings, IDP_PORT, auto_approve=False) as idp:
            # device_code (HEARTH_SIGNIN_MODE=direct: no mode in the request): the link and the code to enter.
            r = await http.post("/api/auth/start", json={"user_id": "dora", "provider": "example"})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            body = await wait_session(http, sid, lambda b: bool(signin_of(b)), "device code shown")
            shown = signin_of(body)
            assert body["mode"] == "direct" and body["status"] == "awaiting_user", body
            assert shown["flow"] == "device_code" and shown["url"] == f"{ISSUER}/device"
            assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", str(shown["user_code"])), shown
            r = await http.post(f"/api/auth/session/{sid}/code", json={"code": shown["user_code"]})
            assert r.status_code == 409  # a device-code sign-in takes no pasted code
            status, _, _ = await asyncio.to_thread(
                browse, netns, f"{ISSUER}/device/approve", {"user_code": str(shown["user_code"])}
            )
            assert status == 200
            events = await finish(ctl, http, sid)
            assert "sign-in link shown" in [e["name"] for e in events]

            # paste_code (the request overrides nothing here; the definition prefers device_code, so pick paste
            # by giving the example only its paste flow): a wrong code, the CLI's own error, then the right code.
            example = ctl.ctl.providers["example"]
            paste_only = {k: v for k, v in example.flows.items() if k != "device_code"}
            ctl.ctl.providers["example"] = example.model_copy(update={"flows": paste_only})
            r = await http.post("/api/auth/start", json={"user_id": "dora", "provider": "example", "mode": "direct"})
            assert r.status_code == 201, r.text
            sid, token = r.json()["session_id"], r.json()["viewer_token"]
            body = await wait_session(http, sid, lambda b: signin_of(b).get("awaiting_code") is True, "code prompt")
            shown = signin_of(body)
            assert shown["flow"] == "paste_code" and str(shown["url"]).startswith(f"{ISSUER}/authorize?"), shown
            assert shown["user_code"] is None and shown["message"] is None

            r = await http.post(f"/api/auth/session/{sid}/code?token={token}", json={"code": "not-the-code"})
            assert r.status_code == 200 and r.json() == {"sent": True}, r.text
            body = await wait_session(http, sid, lambda b: bool(signin_of(b).get("message")), "the CLI's refusal")
            assert signin_of(body)["awaiting_code"] is True
            assert signin_of(body)["message"] == wording.refused_code(False), body  # the person's words
            assert str(signin_of(body)["detail"]).startswith("Invalid code"), body  # the CLI's own, for Details
            assert signin_of(body)["renewed"] is False  # this CLI keeps its link

            code = await asyncio.to_thread(approve_and_read_code, netns, str(shown["url"]))
            r = await http.post(f"/api/auth/session/{sid}/code", json={"code": code})  # the API key works too
            assert r.status_code == 200, r.text
            events = await finish(ctl, http, sid)
            names = [e["name"] for e in events]
            assert names.count("code submitted") == 2 and "code asked again" in names
            # The full sign-in URL and the code are in no event.
            assert not [e for e in events if str(shown["url"]) in json.dumps(e) or code in json.dumps(e)]
            assert [e["kind"] for e in idp.events].count("token_issued") == 2
        assert (await http.delete("/api/users/dora/cli-sandbox")).status_code == 204

        async def nothing_left() -> bool:  # the sign-in sandbox is removed right after completion, in the background
            left = await leaks(ctl, before)
            assert left.total == 0, left
            return True

        await eventually(nothing_left, 10, "nothing left behind")
