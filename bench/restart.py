"""Controller restart under live sessions: N sessions (N-1 desktops + one direct sign-in waiting for the person), the
controller stopped by SIGTERM, started again, killed by SIGKILL, started again. Prints, per restart, the time from the
new controller listening (/health answers) to each desktop viewer's first full frame, whether every session is
still live, and — after the sign-in completed and everything was cancelled — what was left behind.

    sudo .venv/bin/python -m bench.restart --sessions 10   # from the repository root (imports bench.restartkit)

Uses its own fabric namespace (hearth-b<hex>), its own data dir and loopback port; removes all of it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.restartkit import (
    Controller,
    approve_device,
    kill_leftovers,
    start_fleet,
    start_idp,
    viewer_frames,
    wait_body,
)
from hearth.config import Settings, load_settings
from hearth.fabric import netlink
from hearth.fabric.fabric import Fabric
from hearth.reconcile.inventory import scan_sync
from hearth.serving.local import host_image_env, userspace
from hearth.store.db import Database
from hearth.store.models import LeaseRow, SandboxRow


def settings_for(data: Path, port: int) -> Settings:
    tag = secrets.token_hex(3)
    env = {
        "HEARTH_FABRIC_NETNS": f"hearth-b{tag}",
        "HEARTH_DATA_DIR": str(data),
        "HEARTH_API_LISTEN": f"127.0.0.1:{port}",
        "HEARTH_API_KEYS": f"bench-{tag}",
        "HEARTH_DRIVER": "netns",  # as the controller runs (bench/restartkit.py controller_env)
        **host_image_env(),  # this host's image, as `hearth serve` would run it
    }
    return load_settings(env, env_file=None)


async def run(sessions: int, port: int) -> int:
    data = Path(tempfile.mkdtemp(prefix="hearth-restart-"))
    data.chmod(0o711)
    s = settings_for(data, port)
    print(userspace(s))
    ctl = Controller(s, data / "controller.log", sessions)
    host, p = s.listen_host_port
    ws_base = f"ws://{host}:{p}"
    db = Database(s.db_url)
    server = None
    try:
        ctl.start()
        server, _ = await asyncio.to_thread(start_idp, s)
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            fleet = await start_fleet(http, sessions - 1)
        print(f"{sessions} sessions live ({sessions - 1} desktops, 1 sign-in awaiting the person)")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            ctl.stop(sig)
            listening = await asyncio.to_thread(ctl.start)
            frames = await viewer_frames(ws_base, fleet)
            since = [t + (time.monotonic() - listening) - max(frames.values()) for t in frames.values()]
            async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
                live = 0
                for sid in [*fleet.desktops, fleet.signin]:
                    body = await wait_body(http, sid, ("ready", "awaiting_user"))
                    live += body["status"] in ("ready", "awaiting_user")
            print(
                f"{sig.name:8s} live {live}/{sessions}; listening → first frame: "
                f"median {statistics.median(since):.2f}s, max {max(since):.2f}s, min {min(since):.2f}s"
            )
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            approve_device(s, fleet.user_code)
            body = await wait_body(http, fleet.signin, ("completed",), timeout=180)
            print(f"sign-in started before both restarts: {body['status']}")
            for sid in fleet.desktops:
                await http.post(f"/api/auth/session/{sid}/cancel")
            await http.delete("/api/users/signer/cli-sandbox")
        ctl.stop(signal.SIGTERM)
        inv = await asyncio.to_thread(scan_sync, s)
        leases = db.call(lambda d: d.query(LeaseRow).count())
        rows = db.call(lambda d: d.query(SandboxRow).count())
        print(f"after cancel: {len(inv.slots())} sandbox slots, {leases} leases, {rows} sandbox rows left")
        return 0
    finally:
        ctl.kill()
        if server is not None:
            server.shutdown()
            server.server_close()
        db.dispose()
        kill_leftovers(s)
        await Fabric(s).down(force=True)
        for name in netlink.list_netns():
            if name.startswith(f"{s.fabric_netns}-s"):
                netlink.remove_netns(name)
        shutil.rmtree(data, ignore_errors=True)  # its store, logs and sandbox work dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--port", type=int, default=4391)
    args = ap.parse_args()
    raise SystemExit(asyncio.run(run(args.sessions, args.port)))


if __name__ == "__main__":
    main()
