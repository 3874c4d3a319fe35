"""`hearth selftest --flow example`: the whole sign-in flow on this host, in a fabric namespace of its own.

A real OAuth server (hearth_example.idp, code + PKCE, auto-approving) listens inside that fabric; Chromium in the
browser sandbox signs in, the provider CLI writes credentials, the agent pushes them, the vault seals them and the
user's CLI sandbox receives them. Each state transition is printed with its time; everything is removed after.
"""

from __future__ import annotations

import asyncio
import stat
import threading
import time

import httpx
from rich.console import Console

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.fabric.dial import socket_in_netns
from hearth.reconcile.inventory import Inventory, scan_sync
from hearth.serving.local import LocalController, local_controller, scratch_settings
from hearth_example.idp import IdpServer, IdpState

IDP_PORT = 9400
TERMINAL = ("completed", "failed", "cancelled", "expired")


async def run_flow_selftest(flow: str = "example", timeout: float = 180.0) -> int:
    out = Console()
    if flow != "example":
        out.print(f"[red]only the example flow runs without a human[/] (got {flow!r})")
        return 2
    env = {
        "HEARTH_FABRIC_OPEN_PORTS": str(IDP_PORT),
        "HEARTH_EXAMPLE_ISSUER": f"http://192.168.100.1:{IDP_PORT}",
        "OAUTH_FLOW_TIMEOUT": str(int(timeout)),
    }
    with scratch_settings(env, "hearth-st") as settings:
        ok, left = await _with_idp(out, settings, timeout)
    fabric = settings.fabric_netns
    clean = not left.slots() and not netlink.netns_exists(fabric)
    out.print(f"left behind: {'nothing' if clean else left.__dict__}")
    out.print("[green]selftest passed[/]" if ok and clean else "[red]selftest FAILED[/]")
    return 0 if ok and clean else 1


async def _run_flow(out: Console, lc: LocalController, timeout: float) -> bool:
    """Start the example sign-in, print every event as it happens, check the delivered file; True on success."""
    async with httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=30) as http:
        t0 = time.monotonic()
        r = await http.post("/api/auth/start", json={"user_id": "selftest", "provider": "example"})
        r.raise_for_status()
        sid = r.json()["session_id"]
        shown = 0
        status = "starting"
        while time.monotonic() - t0 < timeout + 30:
            events = (await http.get(f"/api/auth/session/{sid}/events")).json()
            for e in events[shown:]:
                out.print(
                    f"{time.monotonic() - t0:8.3f}s  {e['kind']:<5} {e['name']:<22} {e['detail'] or ''}",
                    soft_wrap=True,
                    markup=False,
                )
            shown = len(events)
            status = (await http.get(f"/api/auth/session/{sid}")).json()["status"]
            if status in TERMINAL:
                break
            await asyncio.sleep(0.1)
        path = lc.ctl.clis.home_of("selftest") / ".example" / "credentials.json"
        delivered = path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
        out.print(f"credentials in the CLI sandbox: {'present, mode 0600' if delivered else 'MISSING'}")
        await http.delete("/api/users/selftest/cli-sandbox")
        return status == "completed" and delivered


async def _with_idp(out: Console, settings: Settings, timeout: float) -> tuple[bool, Inventory]:
    """The controller and the example IdP inside its fabric; the flow; what was left after shutdown."""
    idp: IdpServer | None = None
    ok = False
    try:
        async with local_controller(settings) as lc:

            def start_idp() -> IdpServer:
                sock = socket_in_netns(settings.fabric_netns)
                sock.bind((str(settings.bridge_ip), IDP_PORT))
                s = IdpServer(sock, IdpState(auto_approve=True))
                threading.Thread(target=s.serve_forever, daemon=True).start()
                return s

            idp = await asyncio.to_thread(start_idp)
            out.print(f"fabric {settings.fabric_netns}, example IdP on {settings.bridge_ip}:{IDP_PORT} inside it")
            ok = await _run_flow(out, lc, timeout)
    finally:
        if idp is not None:
            idp.shutdown()
            idp.server_close()
        left = await asyncio.to_thread(scan_sync, settings)
    return ok, left
