"""Where the CPU of one sandbox boot goes: sessions are created one at a time through the API; every process in the
sandbox's network namespace is sampled every 10 ms from create until --settle seconds after ready, and its CPU
(user + system) is attributed by program: the agent (python3), the display (Xvnc or Xvfb + x11vnc), xkbcomp,
openbox, Chromium (all its processes), bubblewrap and the rest; plus the controller's own CPU over the same time
(this process, less the sampler thread's own CPU: the controller runs in it, with the bench's HTTP client). This is the cost a boot storm pays per
session on a machine with few cores.

    sudo .venv/bin/python bench/boot_cpu.py [-n 5] [--settle 6] [--vnc xvnc|x11vnc] [--no-chromium]

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx

from hearth.sandbox.procs import pids_in_netns
from hearth.serving.local import local_controller, scratch_settings, userspace

TICK = os.sysconf("SC_CLK_TCK")
GROUPS = {"python3": "agent", "Xvnc": "display", "Xvfb": "display", "x11vnc": "display", "xkbcomp": "xkbcomp"}


def _sample(pid: int) -> tuple[str, float] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    if comm.startswith("python"):  # the agent, or a Python program the desktop runs (openbox's xdg autostart)
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            script = next((a for a in argv[1:] if a and not a.startswith(b"-")), b"")
            comm = "python3" if script in (b"", b"hearth_agent") else os.path.basename(script.decode(errors="replace"))
    fields = raw.rsplit(")", 1)[1].split()
    return comm, (int(fields[11]) + int(fields[12])) / TICK


def _group(comm: str) -> str:
    if comm.startswith("chrom"):
        return "chromium"
    return GROUPS.get(comm, comm)


def _sampler(netns: str, stop: threading.Event, last: dict[int, tuple[str, float]]) -> float:
    """Sample the sandbox's processes every 10 ms until `stop`; returns this thread's own CPU (not the boot's)."""
    t0 = time.thread_time()
    while not stop.wait(0.01):
        for pid in pids_in_netns(netns):
            s = _sample(pid)
            if s is not None:
                last[pid] = s
    return time.thread_time() - t0


async def one(http: httpx.AsyncClient, lc: object, settle: float, i: int) -> dict[str, float]:
    svc = lc.ctl.service  # type: ignore[attr-defined]
    netns = svc.ipam.slot(0).netns  # one session at a time: always slot 0
    last: dict[int, tuple[str, float]] = {}
    stop = threading.Event()
    sampler = asyncio.ensure_future(asyncio.to_thread(_sampler, netns, stop, last))
    cpu0 = os.times()
    t0 = time.monotonic()
    r = await http.post("/api/auth/start", json={"user_id": f"cpu-{i}"})
    r.raise_for_status()
    view = await svc.wait_until(r.json()["session_id"], 60)
    ready_at = time.monotonic() - t0
    if view.status.value != "ready":
        raise SystemExit(f"session {view.status.value}: {view.reason}")
    await asyncio.sleep(settle)
    stop.set()
    own = await sampler
    cpu1 = os.times()
    await http.post(f"/api/auth/session/{view.id}/cancel")
    out: dict[str, float] = defaultdict(float)
    for comm, secs in last.values():
        out[_group(comm)] += secs
    out["sandbox total"] = sum(secs for _, secs in last.values())
    out["controller"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) - own
    out["ready (s)"] = ready_at
    return out


async def main(n: int, settle: float, vnc: str, chromium: bool) -> None:
    env = {"HEARTH_VNC_SERVER": vnc, "HEARTH_CHROMIUM": "1" if chromium else "0", "HEARTH_RATE_LIMIT": "0"}
    with scratch_settings(env, "hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=60) as http,
        ):
            runs = [await one(http, lc, settle, i) for i in range(n)]
            await asyncio.sleep(1)
    keys = sorted({k for r in runs for k in r}, key=lambda k: (k in ("sandbox total", "controller", "ready (s)"), k))
    print(f"CPU seconds per boot (median of {n}, create → ready + {settle:.0f} s; {vnc}, chromium={chromium}):")
    for k in keys:
        vals = [r.get(k, 0.0) for r in runs]
        print(f"  {k:14s} median {statistics.median(vals):6.3f}   max {max(vals):6.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--settle", type=float, default=6.0)
    ap.add_argument("--vnc", choices=("xvnc", "x11vnc"), default="xvnc")
    ap.add_argument("--no-chromium", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.n, a.settle, a.vnc, not a.no_chromium))
