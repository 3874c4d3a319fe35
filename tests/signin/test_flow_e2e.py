"""End to end sign-in with the `example` provider: a real OAuth 2.0 server (code + PKCE) in the fabric namespace,
Chromium in the browser sandbox loads its consent page and auto-approves, the provider's CLI writes credentials,
the agent pushes them, the vault seals them, and they are installed in the user's CLI sandbox."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hearth.agentlink.client import http_json
from hearth.config import Settings
from hearth.fabric import netlink
from tests.conftest import running_controller
from tests.signinkit import idp_env, running_idp

pytestmark = [pytest.mark.netns, pytest.mark.slow]
IDP_PORT = 9400


async def test_example_sign_in_end_to_end(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(**idp_env(IDP_PORT), OAUTH_FLOW_TIMEOUT="150")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with running_idp(settings, IDP_PORT, auto_approve=True) as idp:
            assert (
                await http.post("/api/auth/start", json={"user_id": "alice", "provider": "nope"})
            ).status_code == 422
            t0 = time.monotonic()
            r = await http.post("/api/auth/start", json={"user_id": "alice", "provider": "example"})
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            seen: list[str] = []
            body: dict[str, object] = {}
            while time.monotonic() - t0 < 170:
                body = (await http.get(f"/api/auth/session/{sid}")).json()
                if not seen or seen[-1] != body["status"]:
                    seen.append(str(body["status"]))
                    print(f"{time.monotonic() - t0:7.3f}s  {body['status']}  {body.get('reason') or ''}")
                if body["status"] in ("completed", "failed", "cancelled", "expired"):
                    break
                await asyncio.sleep(0.1)
            assert body["status"] == "completed", (body, seen)
            events = (await http.get(f"/api/auth/session/{sid}/events")).json()
            states = [e["name"] for e in events if e["kind"] == "state"]
            assert states == ["starting", "ready", "awaiting_user", "credentials_captured", "delivered", "completed"]

            # Chromium in the browser sandbox loaded the consent page; the CLI exchanged the code with PKCE.
            kinds = [e["kind"] for e in idp.events]
            assert kinds[:1] == ["authorize_page"] and "token_issued" in kinds, idp.events
            assert "Chrome" in idp.events[0]["user_agent"]

            # Sealed in the vault; only metadata over the API.
            creds = (await http.get("/api/auth/credentials/alice")).json()
            assert [(c["provider"], c["files"]) for c in creds] == [("example", [".example/credentials.json"])]
            assert creds[0]["delivered_at"] is not None
            files = await ctl.ctl.vault.open("alice", "example")
            assert files is not None
            secret_token = json.loads(files[0].data)["access_token"]
            assert secret_token.startswith("ex-at-")
            assert secret_token not in json.dumps(creds)

            # Installed in the user's CLI sandbox, mode 0600, by its agent.
            cli = (await http.get("/api/users/alice/cli-sandbox")).json()
            assert cli["state"] == "running"
            path = ctl.ctl.clis.home_of("alice") / ".example" / "credentials.json"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert path.stat().st_uid == settings.sandbox_uid
            assert json.loads(path.read_text())["access_token"] == secret_token

            # The browser sandbox is removed right after completion (teardown follows the state change).
            slot = int(str(body["sandbox_ip"]).rsplit(".", 1)[1]) - 2
            for _ in range(100):
                if not netlink.netns_exists(f"{settings.fabric_netns}-s{slot}"):
                    break
                await asyncio.sleep(0.1)
            assert not netlink.netns_exists(f"{settings.fabric_netns}-s{slot}")

            # A wrong agent secret is refused at the callback endpoint (from inside the fabric).
            status, _ = await http_json(
                settings.fabric_netns,
                str(settings.bridge_ip),
                settings.callback_port,
                "POST",
                f"/agent/v1/sessions/{sid}/events",
                5,
                {"event": "x"},
                "wrong-secret",
            )
            assert status in (401, 404)

            # Revoking removes the delivered file from the CLI sandbox (through its agent), then the sealed record.
            r = await http.delete("/api/auth/credentials/alice/example")
            assert r.status_code == 200, r.text
            assert r.json() == {"provider": "example", "removed_from_cli_sandbox": [".example/credentials.json"]}
            assert not path.exists()
            assert path.parent.is_dir()  # only the credential goes; the rest of the home stays
            assert (await http.get("/api/auth/credentials/alice")).json() == []
            assert (await http.delete("/api/auth/credentials/alice/example")).status_code == 404

            # The CLI sandbox can be deleted, home included.
            assert (await http.delete("/api/users/alice/cli-sandbox")).status_code == 204
            assert not ctl.ctl.clis.home_of("alice").exists()

        # The credential value appears in no log of the run: controller logs and every sandbox log file.
        assert secret_token not in caplog.text
        for log_file in Path(settings.data_dir).rglob("*.log"):
            assert secret_token not in log_file.read_text(errors="replace"), log_file
