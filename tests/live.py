"""Helpers for tests against a live controller (`tests.conftest.running_controller`): sessions through the real API,
leak accounting, controller memory. Bounded waits only; nothing asserts on wall-clock time."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import httpx

from hearth.config import Settings
from hearth.reconcile.inventory import scan_sync
from hearth.sandbox.netns import pids_in_netns
from tests.conftest import Running
from tests.waits import polite, wait_session


@dataclass(frozen=True)
class Live:
    """One session created through the API."""

    session_id: str
    viewer_token: str
    sandbox_ip: str
    slot: int
    netns: str

    def ws_url(self, ctl: Running, token: str | None = None) -> str:
        return f"{ctl.ws_base}/api/auth/session/{self.session_id}/novnc/websock?token={token or self.viewer_token}"


def signin_of(body: dict[str, object]) -> dict[str, object]:
    """The `signin` part of a session's body (the link, code, prompt of a direct sign-in), or {}."""
    s = body.get("signin")
    return s if isinstance(s, dict) else {}


async def start_ready(http: httpx.AsyncClient, settings: Settings, user: str) -> Live:
    """POST /api/auth/start and wait until the session is ready (the http client carries the API key)."""
    r = await polite(lambda: http.post("/api/auth/start", json={"user_id": user}))
    assert r.status_code == 201, r.text
    started = r.json()
    body = await wait_session(http, started["session_id"], timeout=90)
    assert body["status"] == "ready", body
    ip = str(body["sandbox_ip"])
    slot = int(IPv4Address(ip)) - int(settings.ip_pool_start)  # any pool size (slots beyond 253 of a /22, /21)
    return Live(started["session_id"], started["viewer_token"], ip, slot, f"{settings.fabric_netns}-s{slot}")


def rss_kib() -> int:
    """VmRSS of this process (the controller runs in-process in the tests), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def descendants(pid: int | None = None) -> set[int]:
    """Live (non-zombie) descendant processes of `pid` (default: this process)."""
    root = pid or os.getpid()
    parent: dict[int, int] = {}
    zombies: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(entry.name)] = int(fields[1])
        if fields[0] == b"Z":
            zombies.add(int(entry.name))
    out: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out - zombies


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True)
class Leaks:
    netns: list[str]
    links: list[str]
    dirs: list[str]
    leases: int
    processes: list[int]

    @property
    def total(self) -> int:
        return len(self.netns) + len(self.links) + len(self.dirs) + self.leases + len(self.processes)


async def leaks(ctl: Running, processes_before: set[int]) -> Leaks:
    """Everything a finished session could have left behind: namespaces, fabric ports, directories, leases and
    processes (descendants of the controller that were not there before, or living in a sandbox namespace)."""
    s = ctl.settings
    inv = await asyncio.to_thread(scan_sync, s)
    leases = len(await ctl.ctl.service.ipam.leases())
    procs = set(await asyncio.to_thread(descendants)) - processes_before
    for name in inv.netns.values():
        procs |= set(await asyncio.to_thread(pids_in_netns, name))
    return Leaks(
        netns=sorted(inv.netns.values()),
        links=sorted(n for names in inv.links.values() for n in names),
        dirs=sorted(str(p) for p in inv.workdirs.values()),
        leases=leases,
        processes=sorted(procs),
    )


def chaos_scale() -> float:
    """HEARTH_CHAOS_SCALE (default 1): multiplies the sizes of the chaos/soak tests (e.g. 50 → 1000 cycles)."""
    return max(0.0, float(os.environ.get("HEARTH_CHAOS_SCALE", "1")))


def scaled(n: int) -> int:
    return max(1, round(n * chaos_scale()))
