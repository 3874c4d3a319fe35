"""Memory and CPU of one idle session's sandbox, per VNC server (Xvnc vs Xvfb + x11vnc), in one run: each session is
created through the API, left idle (no viewer) for --settle seconds, then its processes (every process in its
network namespace) are measured: PSS and RSS summed, CPU over --window seconds of idleness.

    sudo .venv/bin/python bench/idle.py [--settle 15] [--window 20]

`--direct N`: idle CPU and memory per direct-mode sign-in sandbox (the agent and the example provider's CLI waiting
for the person's pasted code, no desktop) across N of them at once, CPU measured over --window seconds, for this
tree's agent and example CLI and for those of git revision --before (by default b5e9673^, the agent before its
memory diet of issue 25; the ticking agent, b6bc2a9^, no longer starts under today's driver: it predates
--notify-fd) in the same run,
each arm with its own controller; prints % of one core per sandbox, PSS and USS per sandbox (agent, CLI, all) and
the ratios:

    sudo .venv/bin/python -m bench.idle --direct 100 --window 60 [--before b5e9673^]

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import tarfile
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.procstat import TICK, cpu_seconds_of, smaps_kib
from bench.signinkit import idp_env, running_idp
from hearth.guest import packages as guestpkg
from hearth.providers.model import FlowName
from hearth.sandbox.procs import pids_in_netns
from hearth.serving.local import local_controller, scratch_settings, userspace

REPO = Path(__file__).resolve().parents[1]
IDP_PORT = 9406


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
            before = cpu_seconds_of(pids)
            await asyncio.sleep(window)
            pids = pids_in_netns(netns)
            cpu = (cpu_seconds_of(pids) - before) / window * 100
            pss = sum(smaps_kib(p, "Pss") for p in pids) / 1024
            rss = sum(smaps_kib(p, "Rss") for p in pids) / 1024
            await http.post(f"/api/auth/session/{sid}/cancel")
    print(f"[{vnc}] idle session: PSS {pss:.0f} MiB, RSS {rss:.0f} MiB, CPU {cpu:.2f}% of one core ({len(pids)} procs)")
    return pss, rss, cpu


@contextlib.contextmanager
def agent_of(rev: str | None) -> Iterator[str]:
    """The guest agent and example CLI sandboxes get: this tree's (None), or `rev`'s (`git archive` of hearth_agent/
    and hearth_example/)."""
    if rev is None:
        yield "this tree's agent"
        return
    saved, saved_packages = guestpkg.PACKAGES, guestpkg.packages
    with tempfile.TemporaryDirectory(prefix="hearth-b-agent-") as tmp:
        argv = ["git", "-C", str(REPO), "archive", rev, "hearth_agent", "hearth_example"]
        raw = subprocess.run(argv, check=True, capture_output=True)
        tar = Path(tmp) / "agent.tar"
        tar.write_bytes(raw.stdout)
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        old, example = types.ModuleType("hearth_agent"), types.ModuleType("hearth_example")
        old.__path__ = [str(Path(tmp) / "hearth_agent")]
        example.__path__ = [str(Path(tmp) / "hearth_example")]
        guestpkg.PACKAGES = (old, *saved[1:])  # the driver installs the guest packages through these
        guestpkg.packages = lambda for_tests: guestpkg.PACKAGES + ((example,) if for_tests else ())
        try:
            yield f"the agent of {rev}"
        finally:
            guestpkg.PACKAGES, guestpkg.packages = saved, saved_packages


Memory = dict[str, tuple[float, float]]  # "agent" | "cli" | "all" → (PSS, USS) MiB per sandbox


def memory(pids: list[int], n: int) -> Memory:
    """PSS and USS (Private_Clean + Private_Dirty) per sandbox of the agents (python3 -P -S -m hearth_agent), the
    example CLIs, and every process."""
    out: dict[str, list[float]] = {"agent": [0.0, 0.0], "cli": [0.0, 0.0], "all": [0.0, 0.0]}
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pss, uss = (
            smaps_kib(pid, "Pss") / 1024,
            (smaps_kib(pid, "Private_Clean") + smaps_kib(pid, "Private_Dirty")) / 1024,
        )
        kinds = ["all"] + (["agent"] if "-m hearth_agent" in cmd else ["cli"] if "hearth_example.cli" in cmd else [])
        for kind in kinds:
            out[kind][0] += pss / n
            out[kind][1] += uss / n
    return {k: (v[0], v[1]) for k, v in out.items()}


async def direct_arm(n: int, settle: float, window: float, rev: str | None) -> tuple[float, Memory]:
    """% of one core per idle direct sandbox, over `window` seconds, across `n` of them; their memory."""
    env = idp_env(IDP_PORT) | {"HEARTH_IDLE_TIMEOUT": "3600", "HEARTH_RATE_LIMIT": "0"}  # one client polls N
    with agent_of(rev) as which, scratch_settings(env, "hearth-b") as settings:
        print(f"{userspace(settings)}; {which}")
        async with (
            local_controller(settings) as lc,
            running_idp(settings, IDP_PORT, auto_approve=False),
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=120) as http,
        ):
            example = lc.ctl.providers["example"]  # paste_code (no device polling), waiting long enough
            flows = {k: v for k, v in example.flows.items() if k != FlowName.DEVICE_CODE}
            lc.ctl.providers["example"] = example.model_copy(update={"flows": flows, "timeout": 3600.0})
            gate = asyncio.Semaphore(4)

            async def create(i: int) -> str:
                async with gate:
                    body = {"user_id": f"idle-{i}", "provider": "example", "mode": "direct"}
                    r = await http.post("/api/auth/start", json=body)
                    r.raise_for_status()
                    sid: str = r.json()["session_id"]
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline:
                        got = (await http.get(f"/api/auth/session/{sid}")).raise_for_status().json()
                        if got["status"] in ("failed", "cancelled", "expired", "completed"):
                            raise SystemExit(f"session {i}: {got['status']}: {got.get('reason')}")
                        if (got.get("signin") or {}).get("awaiting_code"):
                            return sid
                        await asyncio.sleep(0.2)
                    raise SystemExit(f"session {i}: no code prompt within 300 s")

            sids = await asyncio.gather(*(create(i) for i in range(n)))
            netns = []
            for sid in sids:
                view = await lc.ctl.service.records.get(sid)
                assert view.slot is not None, view
                netns.append(lc.ctl.service.ipam.slot(view.slot).netns)
            await asyncio.sleep(settle)
            pids = [p for ns in netns for p in pids_in_netns(ns)]
            mem = memory(pids, n)
            before = cpu_seconds_of(pids)
            await asyncio.sleep(window)
            cpu = (cpu_seconds_of(pids) - before) / window * 100 / n
            await asyncio.gather(*(http.post(f"/api/auth/session/{sid}/cancel") for sid in sids))
    tick = 100 / TICK / window / n  # one clock tick of CPU over the window, per sandbox
    print(
        f"[{which}] {n} idle direct sandboxes: {cpu:.4f}% of one core each ({len(pids)} processes in all; "
        f"resolution {tick:.5f}%)"
    )
    print(f"[{which}] per sandbox, PSS / USS MiB: " + ", ".join(f"{k} {p:.2f} / {u:.2f}" for k, (p, u) in mem.items()))
    return cpu, mem


async def direct(n: int, settle: float, window: float, rev: str) -> None:
    load = os.getloadavg()
    old, old_mem = await direct_arm(n, settle, window, rev)
    new, new_mem = await direct_arm(n, settle, window, None)
    print(f"idle CPU per direct sandbox: {new:.4f}% (this tree) vs {old:.4f}% ({rev}): {new / max(old, 1e-9):.3f}×")
    for kind, (pss, uss) in new_mem.items():
        was_pss, was_uss = old_mem[kind]
        print(
            f"{kind} per direct sandbox: PSS {pss:.2f} vs {was_pss:.2f} MiB ({pss / max(was_pss, 1e-9):.3f}×), "
            f"USS {uss:.2f} vs {was_uss:.2f} MiB ({uss / max(was_uss, 1e-9):.3f}×)"
        )
    print(f"load average at start / end: {load[0]:.1f} / {os.getloadavg()[0]:.1f} (a shared machine: noisy)")


async def main(settle: float, window: float) -> None:
    new = await measure("xvnc", settle, window)
    old = await measure("x11vnc", settle, window)
    print(f"ratio xvnc/x11vnc: PSS {new[0] / old[0]:.2f}×, CPU {new[2] / max(old[2], 1e-9):.2f}×")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--direct", type=int, default=0, help="N idle direct sandboxes (before/after agents) instead")
    ap.add_argument("--before", default="b5e9673^", help="git revision of the agent to compare with (--direct)")
    a = ap.parse_args()
    if a.direct:
        asyncio.run(direct(a.direct, a.settle, a.window, a.before))
    else:
        asyncio.run(main(a.settle, a.window))
