"""How long `hearth doctor` takes for one session: N diagnoses on a healthy path, then N with each fault injected
(link down, guest ignoring ARP, agent stopped — the slowest, it costs a timeout). Prints median / max per case,
for the full report (with the end-to-end gateway check) and for the verdict the gateway attaches to a 4502.

    sudo .venv/bin/python bench/doctor.py -n 20 [--fault link --fault arp --fault agent]

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx

from hearth.controller import Controller
from hearth.doctor import Report, diagnose, diagnose_session
from hearth.doctor.probes import processes_in
from hearth.fabric import netlink
from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import Slot
from hearth.serving.local import local_controller, scratch_settings, userspace


def _link(netns: str, port: str, state: str) -> None:
    with netlink.ns(netns) as h:
        h.link("set", index=netlink.link_index(h, port), state=state)


def _forget(netns: str, ip: str, bridge: str) -> None:
    with netlink.ns(netns) as h, contextlib.suppress(Exception):
        h.neigh("del", dst=ip, ifindex=netlink.link_index(h, bridge))


def _arp_ignore(netns: str, value: str) -> None:
    call_in_netns(netns, lambda: Path("/proc/sys/net/ipv4/conf/eth0/arp_ignore").write_text(value))


def faults(ctl: Controller, slot: Slot) -> dict[str, Callable[[], AbstractAsyncContextManager[None]]]:
    s = ctl.settings

    @contextlib.asynccontextmanager
    async def link() -> AsyncIterator[None]:
        await asyncio.to_thread(_link, s.fabric_netns, slot.veth_host, "down")
        try:
            yield
        finally:
            await asyncio.to_thread(_link, s.fabric_netns, slot.veth_host, "up")

    @contextlib.asynccontextmanager
    async def arp() -> AsyncIterator[None]:
        await asyncio.to_thread(_arp_ignore, slot.netns, "8")
        await asyncio.to_thread(_forget, s.fabric_netns, str(slot.ip), s.bridge_device)
        try:
            yield
        finally:
            await asyncio.to_thread(_arp_ignore, slot.netns, "0")

    @contextlib.asynccontextmanager
    async def agent() -> AsyncIterator[None]:
        procs = processes_in(slot.netns)
        pid = next(p.pid for p in procs if p.comm.startswith("python") and "hearth_agent" in p.cmdline)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    return {"link": link, "arp": arp, "agent": agent}


async def measure(label: str, n: int, run: Callable[[], Awaitable[Any]], verbose: bool = False) -> None:
    times, verdicts, slowest = [], set(), (0.0, "")
    for _ in range(n):
        t0 = time.monotonic()
        out = await run()
        took = time.monotonic() - t0
        times.append(took)
        first = getattr(out, "first_failure", out)
        verdicts.add(getattr(first, "hop", None) and f"{first.hop.value}")
        if took > slowest[0] and isinstance(out, Report):
            slowest = (
                took,
                ", ".join(f"{c.name} {c.duration_s * 1000:.0f}" for c in out.checks if c.duration_s > 0.05),
            )
    print(
        f"{label:28s} n={n:3d}  median {statistics.median(times) * 1000:7.1f} ms  max {max(times) * 1000:7.1f} ms"
        f"  first failure: {', '.join(sorted(str(v) for v in verdicts))}"
    )
    if verbose and slowest[1]:
        print(f"{'':28s} slowest run, checks over 50 ms: {slowest[1]}")


async def wait_healthy(ctl: Controller, sid: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (await diagnose(ctl, sid)).first_failure is not None:
        if time.monotonic() > deadline:
            raise SystemExit("the path did not become healthy again")
        await asyncio.sleep(0.25)


async def main(n: int, chosen: list[str], verbose: bool) -> None:
    with scratch_settings({"HEARTH_CHROMIUM": "false"}, "hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=60) as http,
        ):
            ctl = lc.ctl
            r = await http.post("/api/auth/start", json={"user_id": "bench"})
            r.raise_for_status()
            sid = r.json()["session_id"]
            view = await ctl.service.wait_until(sid, 90)
            assert view.status.value == "ready" and view.slot is not None, view
            slot = ctl.service.ipam.slot(view.slot)
            await measure("healthy: report", n, lambda: diagnose(ctl, sid), verbose)
            await measure("healthy: verdict", n, lambda: diagnose_session(ctl, sid))
            for name in chosen:
                await wait_healthy(ctl, sid)
                async with faults(ctl, slot)[name]():
                    await measure(f"{name}: report", n, lambda: diagnose(ctl, sid), verbose)
                    await measure(f"{name}: verdict", n, lambda: diagnose_session(ctl, sid))
            await wait_healthy(ctl, sid)
            await http.post(f"/api/auth/session/{sid}/cancel")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20, help="diagnoses per case")
    p.add_argument("--fault", action="append", choices=["link", "arp", "agent"], help="default: all three")
    p.add_argument("-v", "--verbose", action="store_true", help="per-check times of the slowest report")
    args = p.parse_args()
    asyncio.run(main(args.n, args.fault or ["link", "arp", "agent"], args.verbose))
