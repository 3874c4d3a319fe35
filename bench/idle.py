"""Memory and CPU of one idle session's sandbox, per VNC server (Xvnc vs Xvfb + x11vnc), in one run: each session is
created through the API, left idle (no viewer) for --settle seconds, then its processes (every process in its
network namespace) are measured: PSS and RSS summed, CPU over --window seconds of idleness.

    sudo .venv/bin/python bench/idle.py [--settle 15] [--window 20]

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import httpx

from hearth.api.local import local_controller, scratch_settings, userspace
from hearth.sandbox.procs import pids_in_netns


def _kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


async def measure(vnc: str, settle: float, window: float) -> tuple[float, float, float]:
    with scratch_settings({"HEARTH_VNC_SERVER": vnc}, "hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=60) as http,
        ):
            sid = (await http.post("/api/auth/start", json={"user_id": "idle"})).json()["session_id"]
            view = await lc.ctl.service.wait_until(sid, 60)
            assert view.slot is not None and view.status.value == "ready", view
            netns = lc.ctl.service.ipam.slot(view.slot).netns
            await asyncio.sleep(settle)
            pids = pids_in_netns(netns)
            before = _cpu(pids)
            await asyncio.sleep(window)
            pids = pids_in_netns(netns)
            cpu = (_cpu(pids) - before) / window * 100
            pss = sum(_kib(p, "Pss") for p in pids) / 1024
            rss = sum(_kib(p, "Rss") for p in pids) / 1024
            await http.post(f"/api/auth/session/{sid}/cancel")
    print(f"[{vnc}] idle session: PSS {pss:.0f} MiB, RSS {rss:.0f} MiB, CPU {cpu:.2f}% of one core ({len(pids)} procs)")
    return pss, rss, cpu


async def main(settle: float, window: float) -> None:
    new = await measure("xvnc", settle, window)
    old = await measure("x11vnc", settle, window)
    print(f"ratio xvnc/x11vnc: PSS {new[0] / old[0]:.2f}×, CPU {new[2] / max(old[2], 1e-9):.2f}×")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--window", type=float, default=20.0)
    a = ap.parse_args()
    asyncio.run(main(a.settle, a.window))
