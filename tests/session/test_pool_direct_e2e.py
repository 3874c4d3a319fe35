"""The warm pool's hand-out on the loopback driver (no root): a pooled direct-mode sandbox (HEARTH_POOL_SIZE=
direct:1) serves a sign-in. At hand-out its agent is personalised (a new secret, the session's provider), so the
pool secret is refused from then on; the sign-in completes with the new one, and the pool fills again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from hearth.agentlink.client import http_json
from hearth.config import Settings
from hearth.lifecycle.sandbox import Sandbox
from tests.conftest import loopback_idp_env, running_controller
from tests.live import signin_of
from tests.signinkit import browse, issuer, running_idp
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.slow]
IDP_PORT = 9418


async def test_a_direct_sign_in_in_a_pooled_sandbox(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**loopback_idp_env(IDP_PORT), HEARTH_POOL_SIZE="direct:1")
    at = issuer(IDP_PORT, str(settings.bridge_ip))
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
        running_idp(settings, IDP_PORT, auto_approve=False) as idp,
    ):
        pool = ctl.ctl.service.pool

        async def pooled() -> Sandbox | None:
            ready = pool.ready("direct")
            return ready[0] if ready else None

        first = await eventually(pooled, 120, "a pooled direct-mode sandbox")
        pool_secret, ip = first.secret, str(first.spec.slot.ip)
        r = await http.post("/api/auth/start", json={"user_id": "alice", "provider": "example"})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        body = await wait_session(http, sid, lambda b: bool(signin_of(b)), "device code shown")
        assert body["status"] == "awaiting_user" and body["sandbox_ip"] == ip, body  # the pooled sandbox serves it
        status, _ = await http_json(
            settings.dial_netns, ip, settings.agent_port, "GET", "/v1/login", 5, None, pool_secret
        )
        assert status == 401  # personalised: the pool's secret is refused from now on
        form = {"user_code": str(signin_of(body)["user_code"])}
        status, _, _ = await asyncio.to_thread(browse, settings.dial_netns, f"{at}/device/approve", form)
        assert status == 200
        body = await wait_session(http, sid, lambda b: False, "completion")
        assert body["status"] == "completed", body
        events = (await http.get(f"/api/auth/session/{sid}/events")).json()
        assert "pool" in {e["name"] for e in events if e["kind"] == "stage"}, events
        assert pool.hits == 1 and "token_issued" in [e["kind"] for e in idp.events]
        files = await ctl.ctl.vault.open("alice", "example")
        assert files is not None
        again = await eventually(pooled, 120, "the pool filled again")
        assert again.owner != first.owner
        assert (await http.delete("/api/users/alice/cli-sandbox")).status_code == 204
