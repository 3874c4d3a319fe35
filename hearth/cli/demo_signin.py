"""`hearth demo`: someone signs in, end to end, then everything the demo created is removed.

1. A throwaway controller (its own data directory, fabric namespace, loopback port and API key; this host's driver
   and guest image, and for a real provider its internet settings — HEARTH_EGRESS*, HEARTH_EXTRA_CA_CERTS, …).
2. The provider (hearth/cli/demo_provider.py): `example` (default) on the internet stand-in, reached through the
   fabric's DNS and uplink (`--via internet`), or its IdP on the fabric's bridge address (`--via fabric`); a real
   one (`--provider claude_code`) over this host's internet.
3. `POST /api/auth/start` (remote_browser) → the viewer URL. The person opens it and signs in on the provider's page
   drawn in the viewer; with `--auto` (or no terminal), Debian's Chromium does, through Playwright: a real pointer
   click on the provider's button drawn on the viewer's canvas (hearth/cli/demo_person.py).
4. Every state as it happens: starting → ready → awaiting_user → credentials_captured → delivered → completed.
5. The credentials in the user's CLI sandbox, asked of its agent (`POST /v1/files/digest`): size, mode and SHA-256
   — equal to the vault's sealed copy — never the secret.
6. Clean-up: the credentials revoked, the CLI sandbox deleted, the controller stopped, its fabric namespace and
   data directory removed; what is left behind is checked and printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from hearth.agentlink.client import AgentClient
from hearth.cli import demo_person, demo_provider
from hearth.cli.demo_person import PersonFailed
from hearth.cli.demo_provider import Side
from hearth.config import Settings, known_variables, read_env_file
from hearth.errors import HearthError
from hearth.fabric import netlink
from hearth.serving.local import LocalController, local_controller, scratch_settings, userspace
from hearth_agent.contract import routes

TERMINAL = ("completed", "failed", "cancelled", "expired")
# This host's settings the demo's controller runs with (the rest is its own, throwaway).
PASSED = ("HEARTH_DRIVER", "HEARTH_IMAGE_DIR", "HEARTH_VNC_SERVER", "HEARTH_SCREEN", "HEARTH_READY_TIMEOUT")
# …and for a real provider, what a sign-in over this host's internet needs.
INTERNET = (
    "HEARTH_EGRESS",
    "HEARTH_EGRESS_ALLOW",
    "HEARTH_EGRESS_POLICY",
    "HEARTH_EGRESS_PROXY",
    "HEARTH_EGRESS_PROXY_PORTS",
    "HEARTH_EXTRA_CA_CERTS",
    "HEARTH_UPLINK_NETNS",
    "HEARTH_DNS_UPSTREAM",
    "OAUTH_FLOW_TIMEOUT",
)


def demo_env(
    provider: str, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> dict[str, str]:
    """This host's settings the demo's controller takes (the example provider's internet is the stand-in's)."""
    file_vars = read_env_file(env_file) if env_file is not None else {}
    host = {**file_vars, **(os.environ if environ is None else environ)}
    known = known_variables()
    names = PASSED if provider == "example" else PASSED + INTERNET
    return {k: host[k] for k in names if k in host and k in known}


async def run_signin_demo(provider: str, auto: bool, user: str, keep: float | None, via: str = "internet") -> int:
    out = Console(highlight=False, soft_wrap=True)
    code = 1
    side: Side | None = None
    settings: Settings | None = None
    try:
        with (
            demo_provider.outside(provider, via) as side,
            scratch_settings(demo_env(provider) | side.env, "hearth-demo") as base,
        ):
            settings = demo_provider.settle(side, base)
            out.print(
                f"[bold]hearth demo[/]: {escape(provider)} sign-in for user {escape(user)}  "
                f"fabric netns={settings.fabric_netns}  data dir={settings.data_dir}"
            )
            code = await _with_controller(settings, side, auto, user, keep, out)
    except HearthError as exc:
        out.print(f"[red]the demo could not start:[/] {escape(exc.reason)}")
    except (OSError, RuntimeError) as exc:
        out.print(f"[red]the demo could not start:[/] {escape(str(exc))}")
    left = leftovers(settings, side)
    out.print(f"left behind: {'nothing' if not left else escape(', '.join(left))}")
    return code if not left else 1


def leftovers(settings: Settings | None, side: Side | None) -> list[str]:
    """What the demo created that still exists: its fabric namespace and its sandboxes' namespaces, its data dir,
    the stand-in's namespaces and directory."""
    names = set(side.netns if side else [])
    fabric = settings.fabric_netns if settings else None
    left = [
        f"netns {n}"
        for n in netlink.list_netns()
        if n in names or (fabric is not None and (n == fabric or n.startswith(f"{fabric}-s")))
    ]
    dirs = ([settings.data_dir] if settings else []) + (side.dirs if side else [])
    return left + [f"dir {d}" for d in dirs if d.exists()]


async def _with_controller(
    settings: Settings, side: Side, auto: bool, user: str, keep: float | None, out: Console
) -> int:
    try:
        async with local_controller(settings) as lc:
            out.print(f"1. controller on {lc.base_url}  driver={lc.ctl.driver.name}  ({escape(userspace(settings))})")
            async with demo_provider.inside(side, settings):
                out.print(f"2. {escape(side.line)}")
                try:
                    return await _signin(lc, side, auto, user, keep, out)
                except (HearthError, httpx.HTTPError, OSError, RuntimeError) as exc:
                    why = exc.reason if isinstance(exc, HearthError) else f"{type(exc).__name__}: {exc}"
                    out.print(f"[red]demo failed:[/] {escape(why)}")
                    return 1
    except HearthError as exc:
        out.print(f"[red]the controller did not start:[/] {escape(exc.reason)}")
    except (OSError, RuntimeError) as exc:
        out.print(f"[red]the controller did not start:[/] {escape(str(exc))}")
    return 1


async def _signin(lc: LocalController, side: Side, auto: bool, user: str, keep: float | None, out: Console) -> int:
    provider = side.provider
    timeout = lc.settings.ready_timeout + lc.settings.oauth_flow_timeout + 30
    async with httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=30) as http:
        t0 = time.monotonic()
        r = await http.post("/api/auth/start", json={"user_id": user, "provider": provider, "mode": "remote_browser"})
        if r.status_code != 201:
            out.print(f"[red]start failed:[/] HTTP {r.status_code} {escape(r.text)}")
            return 1
        started = r.json()
        sid = started["session_id"]
        out.print(f"3. session {sid} started; the sign-in page (viewer):")
        out.print(f"   [bold green]{started['viewer_url']}[/]", soft_wrap=True)
        person: asyncio.Task[str] | None = None
        if auto:
            person = asyncio.create_task(_person(started["viewer_url"], lc.settings.ready_timeout + 60), name="person")
        else:
            hint = " (no browser here? run `hearth demo --auto`)" if provider == "example" else ""
            out.print(f"   open it in your browser and sign in{hint}")
        try:
            status = await _follow(http, sid, t0, timeout, out, person)
            if person is not None and not (person.done() and person.exception() is not None):
                try:  # the viewer page shows the end a moment after the API does
                    out.print(f"   the person {await asyncio.wait_for(person, 30)}")
                except Exception as exc:  # Playwright's own errors too
                    out.print(f"[red]the person did not see the end:[/] {escape(str(exc))}")
                    return 1
            if status != "completed":
                body = (await http.get(f"/api/auth/session/{sid}")).json()
                out.print(f"[red]the sign-in ended {status}:[/] {escape(str(body.get('reason') or ''))}")
                return 1
            if saw := side.saw():
                out.print(f"   the provider: {escape(saw)}")
            ok = await _show_delivered(lc, http, user, provider, out)
            if keep:
                out.print(f"   keeping everything for {keep:.0f}s (Ctrl-C to stop)")
                await _wait_or_signal(keep)
            return 0 if ok else 1
        finally:
            await _clean(http, sid, user, provider, out)


async def _person(url: str, timeout: float) -> str:
    """The person in Debian's Chromium: opens the viewer, signs in on the provider's page, sees the end."""
    async with demo_person.chromium() as browser:
        page = await demo_person.open_viewer(browser, url, timeout)
        try:
            said = await demo_person.sign_in(page, timeout)
            end = await demo_person.wait_status(page, TERMINAL, timeout)
        except Exception as exc:
            raise PersonFailed(f"{exc} (the viewer page: {await demo_person.seen(page)})") from exc
        headline = await page.inner_text("#headline")
        return f"{said}; the viewer page then said {headline!r} ({end})"


async def _follow(
    http: httpx.AsyncClient, sid: str, t0: float, timeout: float, out: Console, person: asyncio.Task[str] | None
) -> str:
    """Print every state of the session as it happens; returns the final status."""
    shown = 0
    stop = asyncio.Event()
    with _on_signal(stop.set):
        while time.monotonic() - t0 < timeout:
            # the status first, then the events: an end between the two reads is then among the events shown
            status = str((await http.get(f"/api/auth/session/{sid}")).json()["status"])
            events = (await http.get(f"/api/auth/session/{sid}/events")).json()
            for e in events[shown:]:
                if e["kind"] == "state":
                    why = f"  {e['detail']}" if e.get("detail") else ""
                    out.print(f"   {time.monotonic() - t0:7.2f}s  {e['name']}{escape(why)}")
            shown = len(events)
            if status in TERMINAL:
                return status
            if person is not None and person.done() and person.exception() is not None:
                out.print(f"[red]the person could not sign in:[/] {escape(str(person.exception()))}")
                return "failed"
            if stop.is_set():
                out.print("interrupted")
                return "cancelled"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    return "expired"


async def _show_delivered(lc: LocalController, http: httpx.AsyncClient, user: str, provider: str, out: Console) -> bool:
    """The delivered files, as the CLI sandbox's agent sees them, against the vault's sealed copy (digests only)."""
    creds = (await http.get(f"/api/auth/credentials/{user}")).json()
    targets: list[str] = next((c["files"] for c in creds if c["provider"] == provider), [])
    sealed = {f.path: hashlib.sha256(f.data).hexdigest() for f in await lc.ctl.vault.open(user, provider) or []}
    row = await lc.ctl.clis.ensure(user)
    sandbox = lc.ctl.clis.sandboxes.get(row.owner_id)
    if not targets or sandbox is None:
        out.print("[red]no credentials in the CLI sandbox[/]")
        return False
    spec = sandbox.spec
    agent = AgentClient(lc.settings.fabric_netns, str(spec.slot.ip), lc.settings.agent_port, spec.secret)
    seen = await agent.call("POST", routes.FILES_DIGEST, {"targets": targets})
    out.print(f"4. in {user}'s CLI sandbox ({spec.slot.ip}), read by its agent:")
    ok = not seen["absent"]
    for f in seen["files"]:
        same = sealed.get(f["target"]) == f["sha256"]
        ok = ok and same and f["mode"] == 0o600
        out.print(
            f"   {f['target']}  {f['size']} bytes  mode {f['mode']:04o}  sha256 {f['sha256'][:16]}…  "
            f"{'= the vault’s sealed copy' if same else '[red]≠ the vault’s sealed copy[/]'}"
        )
    for t in seen["absent"]:
        out.print(f"   [red]{t}: absent[/]")
    return ok


async def _clean(http: httpx.AsyncClient, sid: str, user: str, provider: str, out: Console) -> None:
    out.print("5. cleaning up: revoking the credentials, deleting the CLI sandbox, stopping the controller")
    with contextlib.suppress(httpx.HTTPError):
        await http.post(f"/api/auth/session/{sid}/cancel")
        await http.delete(f"/api/auth/credentials/{user}/{provider}")
        await http.delete(f"/api/users/{user}/cli-sandbox")


@contextlib.contextmanager
def _on_signal(handler: Callable[[], Any]) -> Any:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _wait_or_signal(seconds: float) -> None:
    stop = asyncio.Event()
    with _on_signal(stop.set), contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def interactive() -> bool:
    """A person at a terminal (else the demo drives the page itself)."""
    return sys.stdin.isatty()
