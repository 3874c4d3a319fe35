"""`hearth demo`: one live browser session end to end, then everything it created is removed.

Starts the controller (fabric namespace, API, gateway), creates a session through the real API, follows its boot
stages, proves the stream by completing RFB through the gateway and fetching a first frame, prints the viewer URL,
and runs until Ctrl-C (or --duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.fabric import netlink
from hearth.rfb.ws import first_frame
from hearth.serving.local import LocalController, local_controller

STAGES = ("lease", "namespace", "process", "display", "vnc", "rfb")


async def run_demo(settings: Settings, api_key: str, duration: float | None, user: str) -> int:
    out = Console()
    fabric_existed = netlink.netns_exists(settings.fabric_netns)
    try:
        async with local_controller(settings, remove_fabric=not fabric_existed) as lc:
            out.print(
                f"[bold]hearth[/] controller on {lc.base_url}  driver={lc.ctl.driver.name}  "
                f"fabric netns={settings.fabric_netns}"
            )
            try:
                return await _session(lc, api_key, duration, user, out)
            except Exception as exc:
                out.print(f"[red]demo failed:[/] {type(exc).__name__}: {escape(str(exc))}")
                return 1
            finally:
                out.print("stopping: ending sessions, removing sandboxes…")
    except HearthError as exc:
        out.print(f"[red]the controller did not start:[/] {escape(exc.reason)}")
        return 1
    except (OSError, RuntimeError) as exc:
        out.print(f"[red]the controller did not start:[/] {escape(str(exc))}")
        return 1
    finally:
        if not fabric_existed and not netlink.netns_exists(settings.fabric_netns):
            out.print(f"no fabric namespace {settings.fabric_netns} left behind")


async def _session(lc: LocalController, api_key: str, duration: float | None, user: str, out: Console) -> int:
    """Create one session, follow its stages, prove a first frame through the gateway, then wait."""
    settings = lc.settings
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=lc.base_url, headers=headers, timeout=10) as http:
        t0 = time.monotonic()
        r = await http.post("/api/auth/start", json={"user_id": user})
        if r.status_code != 201:
            out.print(f"[red]start failed:[/] HTTP {r.status_code} {escape(r.text)}")
            return 1
        started = r.json()
        sid = started["session_id"]
        body = await _follow(http, sid, out, settings.ready_timeout + 15)
        if body["status"] != "ready":
            out.print(f"[red]session {body['status']}:[/] {escape(str(body.get('reason')))}")
            return 1
        ws_url = f"{lc.ws_base}/api/auth/session/{sid}/novnc/websock?token={started['viewer_token']}"
        frame = await first_frame(ws_url)
        first_frame_s = time.monotonic() - t0
    table = Table(title=f"session {sid}")
    table.add_column("stage")
    table.add_column("done at (s since create)", justify="right")
    for stage in STAGES:
        if stage in body["timings"]:
            table.add_row(stage, f"{body['timings'][stage]:.3f}")
    table.add_row("first frame via gateway", f"{first_frame_s:.3f}")
    out.print(table)
    out.print(
        f"first frame: {frame.init.width}x{frame.init.height} '{frame.init.name}', "
        f"{'non-blank pixels' if frame.non_blank else '[yellow]blank[/]'}"
    )
    out.print(f"\n[bold green]viewer:[/] {started['viewer_url']}", soft_wrap=True)
    out.print(f"[bold]WebSocket:[/] {ws_url}", soft_wrap=True)
    out.print(f"[bold]API key (demo only):[/] {api_key}")
    out.print(
        "Press Ctrl-C to stop; everything created is removed." if duration is None else f"Running {duration:.0f}s."
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    return 0


async def _follow(http: httpx.AsyncClient, sid: str, out: Console, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=out) as bar:
        task = bar.add_task("starting sandbox", total=None)
        while True:
            body: dict[str, Any] = (await http.get(f"/api/auth/session/{sid}")).json()
            timings = body.get("timings") or {}
            assert isinstance(timings, dict)
            for stage in STAGES:
                if stage in timings and stage not in seen:
                    seen.add(stage)
                    bar.update(task, description=f"{stage} ✓ ({timings[stage]:.2f}s)")
            if body["status"] not in ("queued", "starting") or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.1)


def demo_key() -> str:
    return "demo-" + secrets.token_urlsafe(18)
