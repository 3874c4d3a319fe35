"""Prompts meeting trouble, through real controllers and a real CLI sandbox (network namespaces): a controller restart
mid-prompt (the CLI runs on in its sandbox, the next controller attaches, the stream resumes and the answer is whole),
a cancel while the CLI sandbox starts (the CLI never runs), and the sandbox killed mid-run (failed, naming the
sandbox)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hearth.config import Settings
from hearth.serving.local import local_controller
from hearth.vault.store import CredentialFile
from tests.prompts.test_e2e import sse, text
from tests.restartkit import remove_everything, sandbox_pids
from tests.signinkit import idp_env, issuer, running_idp
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]
IDP_PORT = 9415
USER = "rui"


async def status_until(http: httpx.AsyncClient, pid: str, want: set[str], timeout: float = 120) -> dict[str, Any]:

    async def look() -> dict[str, Any]:
        body: dict[str, Any] = (await http.get(f"/api/prompts/{pid}")).json()
        assert body["status"] in want, body  # the last look, should it time out
        return body

    return await eventually(look, timeout, f"prompt {pid} {sorted(want)}", interval=0.1)


async def post(http: httpx.AsyncClient, prompt: str) -> str:
    r = await http.post(f"/api/users/{USER}/prompts", json={"provider": "example", "prompt": prompt})
    assert r.status_code == 202, r.text
    return str(r.json()["prompt_id"])


async def test_restart_cancel_while_starting_and_sandbox_killed(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**idp_env(IDP_PORT))
    try:
        async with running_idp_after_fabric(settings) as idp:
            async with local_controller(settings, drain=False, remove_fabric=False) as a:
                creds = {"issuer": issuer(IDP_PORT), **idp.issue()}
                files = [CredentialFile(".example/credentials.json", 0o600, json.dumps(creds).encode())]
                await a.ctl.vault.put(USER, "example", files, None)
                async with httpx.AsyncClient(base_url=a.base_url, headers=a.headers, timeout=60) as http:
                    pid = await post(http, "[wait:6] across a restart")
                    await status_until(http, pid, {"running"})
            # the controller is gone; the CLI sandbox and its CLI run on
            async with (
                local_controller(settings) as b,
                httpx.AsyncClient(base_url=b.base_url, headers=b.headers, timeout=120) as http,
            ):
                body = await status_until(http, pid, {"completed", "failed", "timed_out", "cancelled"})
                assert body["status"] == "completed", body
                events = await sse(http, pid)
                assert text(events) == "…You said: [wait:6] across a restart (turn 1)" == body["answer"]

                # an idle stop keeps the home: the next prompt resumes the sandbox and continues the conversation
                await b.ctl.clis.stop(USER)
                assert (await http.get(f"/api/users/{USER}/cli-sandbox")).json()["state"] == "stopped"
                r = await http.post(
                    f"/api/users/{USER}/prompts",
                    json={"provider": "example", "prompt": "resumed", "conversation_id": body["conversation_id"]},
                )
                assert r.status_code == 202, r.text
                again = await status_until(http, r.json()["prompt_id"], {"completed", "failed", "timed_out"})
                assert again["status"] == "completed" and again["answer"].endswith("(turn 2)"), again
                assert (await http.get(f"/api/users/{USER}/cli-sandbox")).json()["state"] == "running"

                # a cancel while the CLI sandbox starts: the CLI never runs
                assert (await http.delete(f"/api/users/{USER}/cli-sandbox")).status_code == 204
                await b.ctl.vault.put(USER, "example", files, None)
                called = [e["kind"] for e in idp.events].count("model_called")
                pid = await post(http, "never asked")
                assert (await http.post(f"/api/prompts/{pid}/cancel")).status_code == 200
                body = await status_until(http, pid, {"cancelled", "completed", "failed"})
                assert body["status"] == "cancelled", body
                assert [e["kind"] for e in idp.events].count("model_called") == called

                # the sandbox killed mid-run: failed, naming the sandbox
                pid = await post(http, "[wait:30] doomed")
                await status_until(http, pid, {"running"})
                for p in await asyncio.to_thread(sandbox_pids, settings):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                body = await status_until(http, pid, {"failed", "completed", "timed_out"})
                assert body["status"] == "failed" and body["step"] == "sandbox", body
                assert "[sandbox]" in body["reason"]
    finally:
        await asyncio.to_thread(remove_everything, settings)


class running_idp_after_fabric:
    """The example IdP in the fabric namespace, created first (the controllers find it there and keep it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cm: Any = None

    async def __aenter__(self) -> Any:
        from hearth.fabric.fabric import Fabric

        await Fabric(self.settings).up()
        self._cm = running_idp(self.settings, IDP_PORT, auto_approve=True)
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)
