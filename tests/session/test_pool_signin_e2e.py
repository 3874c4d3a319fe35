"""Sign-in (example provider) in a sandbox handed out by the warm pool: the pooled agent starts with no provider
allowed and the pool secret; at hand-out it is personalised (new secret, the session's provider digest), so the
sign-in completes with the NEW secret (the agent's pushes to the controller carry it) — and the pool secret is
refused by the agent from then on."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from hearth.agentlink.client import http_json
from hearth.config import Settings
from hearth.lifecycle.sandbox import Sandbox
from tests.conftest import running_controller
from tests.signinkit import idp_env, running_idp
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]
IDP_PORT = 9400


async def test_example_sign_in_in_a_pooled_sandbox(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_POOL_SIZE="remote_browser:1", **idp_env(IDP_PORT), OAUTH_FLOW_TIMEOUT="150")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        pool = ctl.ctl.service.pool
        async with running_idp(settings, IDP_PORT, auto_approve=True) as idp:

            async def ready() -> Sandbox | None:
                return next(iter(pool.ready("remote_browser")), None)

            pooled = await eventually(ready, 120, "a pooled sandbox")
            pool_secret, ip = pooled.secret, str(pooled.spec.slot.ip)
            r = await http.post("/api/auth/start", json={"user_id": "alice", "provider": "example"})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            refused = False
            body = await wait_session(http, sid, lambda b: b["status"] in ("ready", "awaiting_user"), "handed out", 170)
            if body["status"] in ("ready", "awaiting_user"):
                # Mid-flight: the pool secret is refused by the handed-out agent.
                s = settings
                status, _ = await http_json(s.dial_netns, ip, s.agent_port, "GET", "/v1/login", 5, None, pool_secret)
                assert status == 401
                refused = True
            body = await wait_session(http, sid, lambda _: False, "completion", 170)
            assert body["status"] == "completed", body
            assert refused  # the check above ran while the sandbox lived
            assert body["sandbox_ip"] == ip  # the pooled sandbox served it
            events = (await http.get(f"/api/auth/session/{sid}/events")).json()
            assert "pool" in {e["name"] for e in events if e["kind"] == "stage"}
            assert "token_issued" in [e["kind"] for e in idp.events]
            assert pool.hits == 1
            files = await ctl.ctl.vault.open("alice", "example")
            assert files is not None and files[0].data
