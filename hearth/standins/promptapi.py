"""Prompt conformance through hearth's API with the real CLIs: the controller's prompt API (hearth/prompts/), the
user's real CLI sandbox (netns driver), its agent's runner, and the CLI reaching the model-API stand-in
(hearth/standins/modelapi.py) over the real path — the internet stand-in (hearth/standins/internet.py: DNS, the
fabric's egress, HTTPS under a throwaway CA trusted through HEARTH_EXTRA_CA_CERTS).

Per provider (the user's credential sealed in the vault as a sign-in leaves it):
- `answer`: POST → 202, the SSE stream's `text` events … `done`, the text intact; the prompt `completed`;
- `refresh`: the sealed access token expired; the CLI refreshes during the prompt → the vault's version +1 and the
  CLI sandbox's file holds the newest (rotated) tokens;
- `cancel`: mid-stream (the stand-in sent part of a slow answer) → `cancelled`, no CLI process left in the sandbox;
- `revoked`: the account revoked at the stand-in → `failed` at step `credentials`, the credential `needs_signin`,
  and the next prompt gets 409.

Used by tests/standins/test_prompt_api.py; needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hearth.standins import modelapi, promptcheck
from hearth.standins.modelapi import ModelAPI
from hearth.vault.store import CredentialFile

SCENARIOS = ("answer", "refresh", "cancel", "revoked")
TIMEOUT = 240.0


@dataclass
class ApiResult:
    provider: str
    scenario: str
    failed_step: str = ""
    prompt: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed_step

    @property
    def text(self) -> str:
        return "".join(e["data"]["text"] for e in self.events if e["event"] == "text")


@dataclass
class World:
    api: ModelAPI
    ctl: Any  # hearth.serving.local.LocalController
    http: httpx.AsyncClient
    inet: Any = None  # hearth.standins.internet.Internet


@contextlib.asynccontextmanager
async def world(prefix: str = "hearth-pa", env: dict[str, str] | None = None) -> AsyncIterator[World]:
    """The internet stand-in answering with a model-API stand-in, and a controller attached to it (`env`: more
    settings, e.g. HEARTH_POOL_SIZE)."""
    from hearth.serving.local import local_controller, scratch_settings
    from hearth.standins.e2e import settings_env
    from hearth.standins.internet import internet

    api = ModelAPI()
    with contextlib.ExitStack() as stack:
        inet = stack.enter_context(internet(f"{prefix}i", modelapi.responder(api)))
        s = stack.enter_context(
            scratch_settings({**settings_env(inet), "HEARTH_CHROMIUM": "false", **(env or {})}, prefix)
        )
        async with (
            local_controller(s) as ctl,
            httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=TIMEOUT) as http,
        ):
            yield World(api, ctl, http, inet)


async def seal(w: World, user: str, provider: str, *, expired: bool = False) -> int:
    """The user's credential as a sign-in against the stand-in leaves it, sealed in the vault; its version."""
    p = w.ctl.ctl.providers[provider]
    targets = {f.target for f in p.credential_files}
    files = [
        CredentialFile(rel, 0o600, data)
        for rel, data in promptcheck.signed_in_files(provider, expired=expired).items()
        if rel in targets
    ]
    meta = await w.ctl.ctl.vault.put(user, provider, files, None)
    return int(meta.version)


async def sse(http: httpx.AsyncClient, pid: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with http.stream("GET", f"/api/prompts/{pid}/stream") as r:
        if r.status_code != 200:
            raise RuntimeError(f"stream: HTTP {r.status_code}")
        ev: dict[str, Any] = {}
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                ev["event"] = line[7:]
            elif line.startswith("data: "):
                ev["data"] = json.loads(line[6:])
            elif not line and "event" in ev:
                out.append(ev)
                if ev["event"] == "end":
                    return out
                ev = {}
    return out


async def credential(w: World, user: str, provider: str) -> dict[str, Any]:
    r = await w.http.get(f"/api/auth/credentials/{user}")
    r.raise_for_status()
    return next((c for c in r.json() if c["provider"] == provider), {})


async def submit(w: World, user: str, provider: str) -> httpx.Response:
    return await w.http.post(f"/api/users/{user}/prompts", json={"provider": provider, "prompt": "Say the sentence."})


async def until_ended(w: World, pid: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        body: dict[str, Any] = (await w.http.get(f"/api/prompts/{pid}")).json()
        if body["status"] in ("completed", "failed", "cancelled", "timed_out") or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


def cli_pids(w: World, user: str, provider: str) -> list[int]:
    """The CLI's processes in the user's CLI sandbox (its network namespace)."""
    from hearth.sandbox.procs import pids_in_netns
    from hearth.store.models import CliSandboxRow

    row = w.ctl.ctl.db.call(lambda d: d.get(CliSandboxRow, user))
    if row is None or row.slot is None:
        return []
    netns = w.ctl.ctl.service.ipam.slot(row.slot).netns
    exe = w.ctl.ctl.providers[provider].cli.bin
    out = []
    for pid in pids_in_netns(netns):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(
            a.endswith(exe.encode()) or a.endswith(f"{exe}.exe".encode()) or f"/{exe}/".encode() in a for a in argv[:2]
        ):
            out.append(pid)
    return out


async def check(w: World, provider: str, scenario: str) -> ApiResult:
    res = ApiResult(provider, scenario)
    user = f"pa-{provider.replace('_', '-')}-{scenario}"
    w.api.revoked, w.api.delay, w.api.chunks = False, 0.0, 4
    version = await seal(w, user, provider, expired=scenario == "refresh")
    refreshes = len(w.api.refreshes)
    if scenario == "cancel":
        w.api.delay, w.api.chunks = 1.0, 60
        w.api.streaming.clear()
        w.api.pieces_out = 0
    if scenario == "revoked":
        w.api.revoked = True
    r = await submit(w, user, provider)
    if r.status_code != 202:
        res.failed_step = f"submit: HTTP {r.status_code}: {r.text[:300]}"
        return res
    pid = r.json()["prompt_id"]
    if scenario == "cancel":
        if not await asyncio.to_thread(w.api.streaming.wait, TIMEOUT):
            res.failed_step = "cancel: the model's answer never started streaming"
            return res
        res.extra["running"] = len(cli_pids(w, user, provider))
        if not res.extra["running"]:
            res.failed_step = "cancel: no CLI process found running in the sandbox mid-stream"
            return res
        c = await w.http.post(f"/api/prompts/{pid}/cancel")
        if c.status_code != 200:
            res.failed_step = f"cancel: HTTP {c.status_code}"
            return res
    res.events = await sse(w.http, pid)
    res.prompt = await until_ended(w, pid)
    status, step = res.prompt["status"], res.prompt.get("step")
    if scenario in ("answer", "refresh"):
        if status != "completed" or res.text != modelapi.ANSWER:
            res.failed_step = f"{scenario}: {status} ({step}: {res.prompt.get('reason')}), text {res.text!r}"
        elif [e["event"] for e in res.events if e["event"] in ("done", "end")] != ["done", "end"]:
            res.failed_step = f"{scenario}: the stream did not end with done: {[e['event'] for e in res.events]}"
    if scenario == "refresh" and not res.failed_step:
        cred = await credential(w, user, provider)
        target = w.ctl.ctl.providers[provider].credential_files[0].target
        held = (w.ctl.ctl.clis.home_of(user) / target).read_bytes()
        _, refresh = w.api.tokens(provider)
        res.extra |= {"version": cred.get("version"), "was": version, "refreshes": len(w.api.refreshes) - refreshes}
        if cred.get("version") != version + 1:
            res.failed_step = f"refresh: vault version {cred.get('version')} (was {version}; want +1)"
        elif refresh.encode() not in held:
            res.failed_step = "refresh: the CLI sandbox does not hold the newest (rotated) file"
    if scenario == "cancel" and not res.failed_step:
        left = cli_pids(w, user, provider)
        if status != "cancelled" or left or res.text == modelapi.ANSWER:
            res.failed_step = f"cancel: {status}, {len(left)} CLI processes left, text {res.text!r}"
    if scenario == "revoked":
        cred = await credential(w, user, provider)
        again = await submit(w, user, provider)
        res.extra |= {"credential": cred.get("status"), "next": again.status_code}
        if status != "failed" or step != "credentials":
            res.failed_step = f"revoked: {status} at {step}: {res.prompt.get('reason')}"
        elif cred.get("status") != "needs_signin":
            res.failed_step = f"revoked: the credential is {cred.get('status')!r}, not needs_signin"
        elif again.status_code != 409:
            res.failed_step = f"revoked: the next prompt got HTTP {again.status_code}, not 409"
    return res
