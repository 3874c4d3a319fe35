"""`hearth selftest --flow example`: the whole sign-in flow on this host, in a fabric namespace of its own.

A real OAuth server (hearth_example.idp, code + PKCE, auto-approving) listens inside that fabric; Chromium in the
browser sandbox signs in, the provider CLI writes credentials, the agent pushes them, the vault seals them and the
user's CLI sandbox receives them. Each state transition is printed with its time; everything is removed after.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console

from hearth.api.app import build, create_app
from hearth.cli.serve import server
from hearth.config import load_settings
from hearth.fabric import netlink
from hearth.fabric.dial import socket_in_netns
from hearth.reconcile.inventory import scan_sync
from hearth_example.idp import IdpServer, IdpState

IDP_PORT = 9400
TERMINAL = ("completed", "failed", "cancelled", "expired")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_flow_selftest(flow: str = "example", timeout: float = 180.0) -> int:
    out = Console()
    if flow != "example":
        out.print(f"[red]only the example flow runs without a human[/] (got {flow!r})")
        return 2
    data = Path("/var/tmp") / f"hearth-selftest-{secrets.token_hex(3)}"
    data.mkdir(mode=0o711, parents=True)
    fabric = f"hearth-st{secrets.token_hex(3)}"
    settings = load_settings(
        {
            "HEARTH_FABRIC_NETNS": fabric,
            "HEARTH_DATA_DIR": str(data),
            "HEARTH_API_LISTEN": f"127.0.0.1:{_free_port()}",
            "HEARTH_API_KEYS": "selftest-" + secrets.token_hex(8),
            "HEARTH_DRIVER": "netns",
            "HEARTH_FABRIC_OPEN_PORTS": str(IDP_PORT),
            "HEARTH_EXAMPLE_ISSUER": f"http://192.168.100.1:{IDP_PORT}",
            "OAUTH_FLOW_TIMEOUT": str(int(timeout)),
        },
        env_file=None,
    )
    ctl = build(settings)
    srv = server(settings, create_app(ctl))
    task = asyncio.create_task(srv.serve())
    idp: IdpServer | None = None
    ok = False
    try:
        while not srv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)

        def start_idp() -> IdpServer:
            sock = socket_in_netns(fabric)
            sock.bind((str(settings.bridge_ip), IDP_PORT))
            s = IdpServer(sock, IdpState(auto_approve=True))
            threading.Thread(target=s.serve_forever, daemon=True).start()
            return s

        idp = await asyncio.to_thread(start_idp)
        out.print(f"fabric {fabric}, example IdP on {settings.bridge_ip}:{IDP_PORT} inside it")
        host, port = settings.listen_host_port
        headers = {"Authorization": f"Bearer {settings.api_keys[0]}"}
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=headers, timeout=30) as http:
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
            path = ctl.clis.home_of("selftest") / ".example" / "credentials.json"
            delivered = path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
            out.print(f"credentials in the CLI sandbox: {'present, mode 0600' if delivered else 'MISSING'}")
            await http.delete("/api/users/selftest/cli-sandbox")
            ok = status == "completed" and delivered
    finally:
        if idp is not None:
            idp.shutdown()
            idp.server_close()
        srv.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        left = await asyncio.to_thread(scan_sync, settings)
        await ctl.fabric.down(force=True)
        shutil.rmtree(data, ignore_errors=True)
    clean = not left.slots() and not netlink.netns_exists(fabric)
    out.print(f"left behind: {'nothing' if clean else left.__dict__}")
    out.print("[green]selftest passed[/]" if ok and clean else "[red]selftest FAILED[/]")
    return 0 if ok and clean else 1
