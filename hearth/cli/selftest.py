"""`hearth selftest --driver D`: one sandbox through the real controller path, in a fabric namespace of its own.

A controller (API, session service, gateway) starts on loopback with a unique fabric namespace and data directory;
one session boots with driver D (VM drivers use the current guest image, `hearth image build`). The selftest waits
for the agent's /health and for a first frame through the gateway's WebSocket (RFB over the real relay), prints
per-stage timings, cancels the session, stops the controller and checks that nothing is left: no namespace, no
TAP/veth, no VM process, no sandbox directory. Exit 0 only if all held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.fabric import netlink
from hearth.lifecycle.readiness import http_get_json
from hearth.rfb.ws import first_frame
from hearth.sandbox.base import Driver, SandboxSpec
from hearth.serving.local import LocalController, local_controller, scratch_settings

TERMINAL = ("completed", "failed", "cancelled", "expired")
STAGES = ("lease", "namespace", "process", "kernel", "agent", "display", "vnc", "rfb", "first_frame")


@dataclass
class Result:
    ok: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def selftest_env(driver: str, base: Settings, ready_timeout: float, chromium: bool) -> dict[str, str]:
    """What a driver selftest sets on top of `scratch_settings`: the driver, its timeouts, the host's image."""
    return {
        "HEARTH_DRIVER": driver,
        "HEARTH_READY_TIMEOUT": str(int(ready_timeout)),
        "HEARTH_VIEWER_WAIT": str(int(ready_timeout)),
        "HEARTH_CHROMIUM": "true" if chromium else "false",
        "HEARTH_IMAGE_DIR": str(base.images.resolve()),
        "HEARTH_VM_VCPUS": str(base.vm_vcpus),
        "HEARTH_VM_MEM_MIB": str(base.vm_mem_mib),
    }


def qemu_processes(marker: str) -> list[int]:
    """Pids of processes whose command line mentions `marker` (a path only our sandbox uses)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(entry.name))
        except OSError:
            continue
    return out


def leftovers(settings: Settings, slot_index: int, fabric_gone: bool) -> list[str]:
    """Everything of slot `slot_index` (or of the fabric, when it should be gone) that still exists."""
    found = []
    netns_name = f"{settings.fabric_netns}-s{slot_index}"
    if netlink.netns_exists(netns_name):
        found.append(f"netns {netns_name}")
    if netlink.netns_exists(settings.fabric_netns):
        if fabric_gone:
            found.append(f"fabric netns {settings.fabric_netns}")
        with netlink.ns(settings.fabric_netns) as fab:
            for link in (f"hearth-t{slot_index}", f"hearth-v{slot_index}"):
                if netlink.link_index(fab, link) is not None:
                    found.append(f"link {link}")
    workdir = settings.data_dir / "sandboxes" / netns_name
    if workdir.exists():
        found.append(f"dir {workdir}")
    pids = qemu_processes(str(workdir))
    if pids:
        found.append(f"processes {pids}")
    return found


async def _poll_agent(settings: Settings, ip: str, t0: float, timings: dict[str, float]) -> None:
    """Time the first answer of the agent's /health (from inside the fabric, as the controller reaches it)."""
    while True:
        try:
            status, _ = await http_get_json(settings.fabric_netns, ip, settings.agent_port, "/health", 1.0)
            if status == 200:
                timings["agent"] = round(time.monotonic() - t0, 3)
                return
        except (OSError, TimeoutError, ValueError):
            pass
        await asyncio.sleep(0.05)


async def run_driver_selftest(
    driver: str, base: Settings, ready_timeout: float, chromium: bool, out: Console
) -> Result:
    res = Result()
    with scratch_settings(selftest_env(driver, base, ready_timeout, chromium), "hearth-st") as settings:
        probe_cache = base.data_dir / "qemu-accel.json"  # the host's KVM verdict: no second probe boot
        if probe_cache.is_file():
            shutil.copyfile(probe_cache, settings.data_dir / probe_cache.name)
        out.print(f"driver {driver}, fabric namespace {settings.fabric_netns}, data {settings.data_dir}")
        try:
            async with local_controller(settings) as lc:
                ctl = lc.ctl
                res.details["driver"] = ctl.driver.name
                for attr in ("accel", "accel_reason"):
                    if hasattr(ctl.driver, attr):
                        res.details[attr] = getattr(ctl.driver, attr)
                await _session(lc, ready_timeout, res)
        except HearthError as exc:
            res.problems.append(exc.reason)
        except Exception as exc:
            res.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            res.leftovers += [f"after shutdown: {x}" for x in await asyncio.to_thread(leftovers, settings, 0, True)]
    res.ok = not res.problems and not res.leftovers
    return res


def guest_console(driver: Driver, spec: SandboxSpec, limit: int = 1500) -> str | None:
    """The tail of the guest's serial console for a failed boot; None for a driver without one (the netns driver:
    every driver has the method, only those that offer it answer, so asking the others would raise)."""
    if not driver.offers.console_tail:
        return None
    return driver.console_tail(spec, limit)


async def _session(lc: LocalController, ready_timeout: float, res: Result) -> None:
    """One session through the API: ready, a first frame through the gateway, cancel, nothing left."""
    ctl, settings = lc.ctl, lc.settings
    async with httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=30) as http:
        t0 = time.monotonic()
        r = await http.post("/api/auth/start", json={"user_id": "selftest"})
        if r.status_code != 201:
            res.problems.append(f"POST /api/auth/start answered {r.status_code}: {r.text}")
            return
        started = r.json()
        sid = started["session_id"]
        ip = str(ctl.service.ipam.slot(0).ip)
        agent_task = asyncio.create_task(_poll_agent(settings, ip, t0, res.timings))
        status = "starting"
        body: dict[str, Any] = {}
        while time.monotonic() - t0 < ready_timeout + 120:
            body = (await http.get(f"/api/auth/session/{sid}")).json()
            status = body["status"]
            if status not in ("queued", "starting"):
                break
            await asyncio.sleep(0.1)
        agent_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent_task
        res.timings.update({k: float(v) for k, v in (body.get("timings") or {}).items()})
        if status != "ready":
            res.problems.append(f"session {status}: {body.get('reason')}")
        else:
            url = f"{lc.ws_base}/api/auth/session/{sid}/novnc/websock?token={started['viewer_token']}"
            try:
                frame = await first_frame(url, timeout=60)
                res.timings["first_frame"] = round(time.monotonic() - t0, 3)
                res.details["screen"] = f"{frame.init.width}x{frame.init.height}"
                res.details["frame_non_blank"] = frame.non_blank
            except Exception as exc:
                res.problems.append(f"no first frame through the gateway: {type(exc).__name__}: {exc}")
        if status != "ready":
            console = guest_console(ctl.driver, ctl.service.boots.spec(sid, ctl.service.ipam.slot(0)))
            if console is not None:
                res.details["console"] = console
        cancelled = (await http.post(f"/api/auth/session/{sid}/cancel")).json()
        res.details["final_status"] = cancelled.get("status")
        res.leftovers += [f"after cancel: {x}" for x in await asyncio.to_thread(leftovers, settings, 0, False)]


def print_result(out: Console, res: Result) -> None:
    table = Table(title="boot stages (seconds since create)")
    table.add_column("stage")
    table.add_column("at", justify="right")
    table.add_column("+", justify="right")
    prev = 0.0
    for stage in sorted(res.timings, key=lambda s: res.timings[s]):
        at = res.timings[stage]
        table.add_row(stage, f"{at:.3f}", f"{at - prev:.3f}")
        prev = at
    out.print(table)
    for key, value in res.details.items():
        if key != "console":
            out.print(f"{key}: {escape(str(value))}")
    if "console" in res.details:
        out.print("[bold]console tail:[/]")
        out.print(escape(str(res.details["console"])), markup=False)
    for p in res.problems:
        out.print(f"[red]problem:[/] {escape(p)}")
    out.print(f"left behind: {escape(', '.join(res.leftovers)) if res.leftovers else 'nothing'}")
    out.print("[green]selftest passed[/]" if res.ok else "[red]selftest FAILED[/]")


def selftest(
    driver: str = typer.Option("", "--driver", help="netns | qemu | firecracker: boot one sandbox"),
    flow: str = typer.Option("", "--flow", help="example: run the whole sign-in flow"),
    ready_timeout: float = typer.Option(0, help="seconds for the sandbox to become ready (0: by driver)"),
    chromium: bool = typer.Option(True, "--chromium/--no-chromium", help="start Chromium in the sandbox"),
) -> None:
    """Boot one sandbox with DRIVER through the real controller path (or run the sign-in FLOW), print stage timings,
    check nothing is left. Exit 0 only if all of that held."""
    from hearth.cli.common import settings_or_exit

    if bool(driver) == bool(flow):
        Console(stderr=True).print("[red]give exactly one of --driver or --flow[/]")
        raise typer.Exit(2)
    if flow:
        from hearth.cli.selftest_flow import run_flow_selftest

        raise typer.Exit(asyncio.run(run_flow_selftest(flow)))
    if driver not in ("netns", "qemu", "firecracker"):
        Console(stderr=True).print(f"[red]unknown driver {escape(driver)!r}[/] (netns, qemu, firecracker)")
        raise typer.Exit(2)
    base = settings_or_exit()
    out = Console()
    timeout = ready_timeout or (240.0 if driver == "qemu" else 90.0)
    res = asyncio.run(run_driver_selftest(driver, base, timeout, chromium, out))
    print_result(out, res)
    raise typer.Exit(0 if res.ok else 1)
