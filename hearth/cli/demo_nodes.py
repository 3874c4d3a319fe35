"""`hearth demo --nodes N`: a cluster on this one machine (hearth.cluster.lab) — N `hearth node`s, each in a network
namespace of its own with its own data dir and fabric, two `hearth edge`s, one throwaway PostgreSQL database —
one session per node placed through an edge, each desktop's first frame fetched through the *other* edge, the
viewer URLs printed; then until Ctrl-C (or --duration), and everything it created is removed."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.cluster import nodes
from hearth.cluster.lab import Lab
from hearth.config import Settings
from hearth.rfb.ws import first_frame
from hearth.store.models import SessionRow
from hearth.store.pglocal import scratch_database


async def run_cluster_demo(settings: Settings, n_nodes: int, duration: float | None) -> int:
    out = Console()
    admin = settings.database_url if settings.database_url.startswith("postgresql") else ""
    prefix = f"hearth-d{secrets.token_hex(3)}"
    try:
        with scratch_database(admin) as url:
            env = {"HEARTH_CHROMIUM": "true" if settings.chromium else "false", "MAX_BROWSER_SESSIONS": "64"}
            lab = Lab(prefix, Path("/var/tmp") / prefix, url, n_nodes, 2, env)
            try:
                out.print(f"starting {n_nodes} nodes and 2 edges in namespaces {prefix}-* …")
                await lab.open()
                return await _show(lab, n_nodes, duration, out)
            finally:
                out.print("stopping: nodes drain their sessions, namespaces and data dirs are removed…")
                await lab.close()
                left = lab.leftovers()
                out.print(f"left behind: {left or 'nothing'}")
    except (RuntimeError, OSError, TimeoutError) as exc:
        out.print(f"[red]demo failed:[/] {escape(str(exc))}")
        return 1


async def _show(lab: Lab, n_nodes: int, duration: float | None, out: Console) -> int:
    headers = {"Authorization": f"Bearer {lab.api_key}"}
    db = lab.db()
    try:
        async with httpx.AsyncClient(base_url=lab.edges[0].url, headers=headers, timeout=60) as http:
            started = []
            for i in range(n_nodes):
                r = await http.post("/api/auth/start", json={"user_id": f"demo{i}"})
                r.raise_for_status()
                started.append(r.json())
            t = Table("session", "node", "status", "first frame via edge 1")
            urls = []
            for body in started:
                sid = body["session_id"]
                deadline = time.monotonic() + 120
                while (s := (await http.get(f"/api/auth/session/{sid}")).json())["status"] == "starting":
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.25)
                row = db.call(lambda x, i=sid: x.get(SessionRow, i))  # type: ignore[misc]
                node = row.node_id if row else "?"
                ws = f"{lab.edges[1].ws}/api/auth/session/{sid}/novnc/websock?token={body['viewer_token']}"
                try:
                    f = await first_frame(ws, 60)
                    frame = f"{f.init.width}x{f.init.height} in {f.frame_s * 1000:.0f} ms"
                except Exception as exc:
                    frame = f"failed: {type(exc).__name__}"
                t.add_row(sid[:8], node, s["status"], frame)
                urls.append(f"{sid[:8]} on {node}: {body['viewer_url']}")
            out.print(t)
            for line in urls:
                out.print(f"[bold green]viewer (edge 0):[/] {line}", soft_wrap=True)
        nt = Table("node", "state", "address", "active/capacity", "free slots")
        for v in db.call(nodes.list_nodes):
            nt.add_row(v.id, v.state.value, v.address, f"{v.active}/{v.capacity}", str(v.free_slots))
        out.print(nt)
    finally:
        db.dispose()
    out.print("open a viewer URL above in a browser on this machine; Ctrl-C ends the demo")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    return 0
