"""Prompts end to end: the real controller (API on loopback), a real CLI sandbox (network namespace) whose agent
runs the example provider's CLI against the example IdP's model API in the fabric namespace. One controller for
the whole path (lean): answer streamed over SSE and WebSocket with resume, conversation continued, a refresh during
a prompt (vault version +1, the sandbox holds the newest file), cancel mid-stream (no CLI process left), the
per-user limit, a hanging CLI (timed_out with its last output), a flooding CLI (bounded answer with a marker),
a revoked credential (needs_signin, then 409), history and deletion."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from hearth.config import Settings
from hearth.vault.store import CredentialFile
from tests.conftest import running_controller
from tests.signinkit import idp_env, issuer, running_idp

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]
IDP_PORT = 9413
ISSUER = issuer(IDP_PORT)
USER = "ana"


async def sse(http: httpx.AsyncClient, pid: str, last: int | None = None, raw: bool = False) -> list[dict[str, Any]]:
    """Every event of the stream until `end` (bounded by the client's timeout)."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    out: list[dict[str, Any]] = []
    async with http.stream("GET", f"/api/prompts/{pid}/stream", params={"raw": raw}, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        ev: dict[str, Any] = {}
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                ev["id"] = int(line[4:])
            elif line.startswith("event: "):
                ev["event"] = line[7:]
            elif line.startswith("data: "):
                ev["data"] = json.loads(line[6:])
            elif not line and "event" in ev:
                out.append(ev)
                if ev["event"] == "end":
                    return out
                ev = {}
    return out


async def post(http: httpx.AsyncClient, prompt: str, **extra: Any) -> httpx.Response:
    return await http.post(f"/api/users/{USER}/prompts", json={"provider": "example", "prompt": prompt, **extra})


async def run(http: httpx.AsyncClient, prompt: str, **extra: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    r = await post(http, prompt, **extra)
    assert r.status_code == 202, r.text
    pid = r.json()["prompt_id"]
    assert r.json()["stream_url"] == f"/api/prompts/{pid}/stream"
    events = await sse(http, pid)
    return (await http.get(f"/api/prompts/{pid}")).json(), events


def text(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == "text")


def cli_processes(marker: str) -> list[int]:
    """PIDs whose command line holds `marker` (a model name only this test's prompt uses)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(name))
            except OSError:
                continue
    return out


async def test_prompts_through_the_example_cli_in_a_real_cli_sandbox(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**idp_env(IDP_PORT), HEARTH_PROMPT_MAX_ANSWER_BYTES="65536", HEARTH_RATE_LIMIT="0")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=120) as http,
        running_idp(settings, IDP_PORT, auto_approve=True) as idp,
    ):
        r = await post(http, "hi")
        assert r.status_code == 409 and "POST /api/auth/start" in r.json()["error"], r.text
        creds = {"issuer": ISSUER, **idp.issue()}
        target = ".example/credentials.json"
        await ctl.ctl.vault.put(USER, "example", [CredentialFile(target, 0o600, json.dumps(creds).encode())], None)

        # bad input, refused before anything runs
        assert (await post(http, " \n")).status_code == 400
        assert (
            await http.post(f"/api/users/{USER}/prompts", json={"provider": "nope", "prompt": "x"})
        ).status_code == 400
        big = await post(http, "x" * (1 << 20))
        assert big.status_code == 413 and "HEARTH_MAX_PROMPT_BYTES" in big.json()["error"]
        assert (await post(http, "x", conversation_id="never-seen")).status_code == 400

        # an answer, streamed; control characters and NUL pass as data
        prompt = 'hello\x00\x01\x1b[2J "quoted" $(not a shell) é'
        body, events = await run(http, prompt)
        assert body["status"] == "completed", body
        want = f"You said: {prompt} (turn 1)"
        assert text(events) == want and body["answer"] == want
        kinds = [e["event"] for e in events]
        assert kinds[-2:] == ["done", "end"] and "usage" in kinds
        assert [e["id"] for e in events if "id" in e] == sorted({e["id"] for e in events if "id" in e})
        assert body["exit_code"] == 0 and body["model"] == "example-1" and body["usage"]["output_tokens"] > 0
        assert {"queued", "sandbox_ready", "first_output", "done"} <= set(body["timings"]), body["timings"]
        pid = body["id"]
        resumed = await sse(http, pid, last=2)  # Last-Event-ID: only what came after
        assert next(e["id"] for e in resumed if "id" in e) == 3
        assert text(resumed) == text(events)[len(text(events[:2])) :]
        raws = [e for e in await sse(http, pid, raw=True) if e["event"] == "raw"]
        assert json.loads(raws[0]["data"])["type"] == "session"
        ws_url = ctl.base_url.replace("http", "ws", 1) + f"/api/prompts/{pid}/stream"
        async with websockets.connect(ws_url, additional_headers=ctl.headers) as ws:
            got = [json.loads(m) async for m in ws]
        assert [m["event"] for m in got] == [e["event"] for e in events]

        # the conversation continues in the same CLI sandbox
        body2, events2 = await run(http, "again", conversation_id=body["conversation_id"])
        assert body2["status"] == "completed" and text(events2).endswith("(turn 2)")

        # a refresh during a prompt: a new vault version, and the sandbox holds the newest file
        before = {m["provider"]: m for m in (await http.get(f"/api/auth/credentials/{USER}")).json()}["example"]
        idp.access = dict.fromkeys(idp.access, 0.0)
        body3, _ = await run(http, "after expiry")
        assert body3["status"] == "completed", body3
        after = {m["provider"]: m for m in (await http.get(f"/api/auth/credentials/{USER}")).json()}["example"]
        assert after["version"] == before["version"] + 1 and after["refreshed_at"] and after["status"] == "active"
        sealed = await ctl.ctl.vault.open(USER, "example")
        assert sealed is not None
        home = ctl.ctl.clis.home_of(USER)
        assert (home / target).read_bytes() == sealed[0].data
        assert json.loads(sealed[0].data)["refresh_token"] != creds["refresh_token"]

        # cancel mid-stream ends the CLI's whole process tree; cancel is idempotent
        marker = f"m-{uuid.uuid4().hex[:12]}"
        r = await post(http, "[slow] talk", model=marker)
        slow = r.json()["prompt_id"]
        second = await post(http, "[slow] again", model=marker)
        third = await post(http, "three")
        assert third.status_code == 429 and "HEARTH_MAX_PROMPTS_PER_USER" in third.json()["error"]
        async with http.stream("GET", f"/api/prompts/{slow}/stream") as s:
            async for line in s.aiter_lines():
                if line == "event: text":
                    break
        assert cli_processes(marker)
        for p in (slow, second.json()["prompt_id"]):
            c = await http.post(f"/api/prompts/{p}/cancel")
            assert c.status_code == 200
        for p in (slow, second.json()["prompt_id"]):
            end = (await sse(http, p))[-1]["data"]
            assert end["status"] == "cancelled", end
        assert (await http.post(f"/api/prompts/{slow}/cancel")).json()["status"] == "cancelled"
        for _ in range(100):
            if not cli_processes(marker):
                break
            await asyncio.sleep(0.1)
        assert cli_processes(marker) == []

        # a CLI that hangs: timed_out, with its last output
        body4, events4 = await run(http, "[hang]", timeout=3)
        assert body4["status"] == "timed_out" and body4["step"] == "timeout" and "thinking" in body4["reason"]
        assert events4[-2]["event"] == "error"

        # a CLI that floods: the stored answer is bounded, with a truncation marker
        body5, _ = await run(http, "[flood:3000]")
        assert body5["status"] == "completed" and body5["truncated"] is True
        assert 60000 < len(body5["answer"].encode()) < 65536 + 200 and "truncated" in body5["answer"]

        # a revoked credential: needs_signin with the CLI's reason, then 409 at once
        await asyncio.to_thread(lambda: idp.revoked.update(set(idp.access) | idp.refresh))
        idp.access, idp.refresh = {}, set()
        body6, _ = await run(http, "after revoke")
        assert body6["status"] == "failed" and body6["step"] == "credentials", body6
        meta = {m["provider"]: m for m in (await http.get(f"/api/auth/credentials/{USER}")).json()}["example"]
        assert meta["status"] == "needs_signin" and "revoked" in meta["status_reason"] and meta["last_used_at"]
        r = await post(http, "again")
        assert r.status_code == 409 and "renewing" in r.json()["error"]

        # 100 concurrent POSTs through the API: exactly HEARTH_MAX_PROMPTS_PER_USER get through (the admitted ones
        # hang until cancelled, so none can finish and free its place while the others are still being admitted)
        await ctl.ctl.vault.put("bea", "example", [CredentialFile(target, 0o600, json.dumps(creds).encode())], None)
        many = await asyncio.gather(
            *(
                http.post("/api/users/bea/prompts", json={"provider": "example", "prompt": "[hang] x"})
                for _ in range(100)
            )
        )
        codes = sorted(r.status_code for r in many)
        assert codes == [202] * 2 + [429] * 98, codes
        assert all("HEARTH_MAX_PROMPTS_PER_USER" in r.json()["error"] for r in many if r.status_code == 429)
        for r in many:
            if r.status_code == 202:
                await http.post(f"/api/prompts/{r.json()['prompt_id']}/cancel")

        # history, paginated; deletion per prompt and per user
        page = (await http.get(f"/api/users/{USER}/prompts", params={"limit": 2})).json()
        assert page["total"] >= 8 and len(page["items"]) == 2 and page["next_offset"] == 2
        assert (await http.delete(f"/api/prompts/{pid}")).status_code == 204
        assert (await http.get(f"/api/prompts/{pid}")).status_code == 404
        gone = (await http.delete(f"/api/users/{USER}/prompts")).json()["deleted"]
        assert gone == page["total"] - 1
        assert (await http.get(f"/api/users/{USER}/prompts")).json()["total"] == 0
        assert (await http.delete(f"/api/users/{USER}/cli-sandbox")).status_code == 204
