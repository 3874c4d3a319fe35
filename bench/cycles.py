"""Session churn: N create → ready → cancel cycles through the API against an in-process controller. Prints
cycles/s, create→ready (median, max), controller memory (VmRSS) and open file descriptors before/after, and what
was left behind (namespaces, fabric ports, sandbox directories, leases).

    sudo .venv/bin/python bench/cycles.py -n 200 [--parallel 4] [--chromium]

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import httpx

from hearth.reconcile.inventory import scan_sync
from hearth.serving.local import local_controller, scratch_settings, userspace


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def call(http: httpx.AsyncClient, method: str, url: str, **kw: object) -> httpx.Response:
    """One API call, waiting out rate limiting (429 + Retry-After) the way a well-behaved client does."""
    while True:
        r = await http.request(method, url, **kw)  # type: ignore[arg-type]
        if r.status_code != 429 or "rate limit" not in r.text:
            return r
        await asyncio.sleep(float(r.headers.get("retry-after", "1")))


async def cycle(http: httpx.AsyncClient, user: str) -> float:
    """Create, wait until ready (polling the API), cancel; returns create→ready in seconds."""
    t0 = time.monotonic()
    r = await call(http, "POST", "/api/auth/start", json={"user_id": user})
    r.raise_for_status()
    sid = r.json()["session_id"]
    while True:
        body = (await call(http, "GET", f"/api/auth/session/{sid}")).json()
        if body["status"] not in ("queued", "starting"):
            break
        await asyncio.sleep(0.1)
    ready = time.monotonic() - t0
    if body["status"] != "ready":
        raise RuntimeError(f"session {sid} ended {body['status']}: {body.get('reason')}")
    (await call(http, "POST", f"/api/auth/session/{sid}/cancel")).raise_for_status()
    return ready


async def main(n: int, parallel: int, chromium: bool) -> None:
    env = {
        "HEARTH_CHROMIUM": "true" if chromium else "false",
        "MAX_SESSIONS_PER_USER": str(max(parallel, 1)),
        "MAX_BROWSER_SESSIONS": str(max(parallel, 1) + 1),
        "HEARTH_RATE_LIMIT": "0",  # the benchmark measures churn, not the API's rate limit
    }
    with scratch_settings(env, "hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=120) as http,
        ):
            ctl = lc.ctl
            await cycle(http, "warmup")
            rss0, fds0 = rss_mib(), fds()
            readies: list[float] = []
            t0 = time.monotonic()
            for i in range(0, n, parallel):
                batch = range(i, min(n, i + parallel))
                readies += await asyncio.gather(*(cycle(http, "bench") for _ in batch))
                done = len(readies)
                if done % max(1, n // 10) < parallel or done == n:
                    rate = done / (time.monotonic() - t0)
                    print(f"{done:6d} cycles  {rate:6.2f}/s  RSS {rss_mib():7.1f} MiB  fds {fds()}")
            elapsed = time.monotonic() - t0
            rss1, fds1 = rss_mib(), fds()
            inv = await asyncio.to_thread(scan_sync, settings)
            leases = len(await ctl.service.ipam.leases())
            ports = sum(len(names) for names in inv.links.values())
            left = len(inv.netns) + len(inv.workdirs) + ports + leases
            print(
                f"\ncycles: {n}  parallel: {parallel}  chromium: {chromium}  in {elapsed:.1f}s  → {n / elapsed:.2f}/s"
            )
            print(f"create→ready  median {statistics.median(readies):.3f}s  max {max(readies):.3f}s")
            print(f"RSS  before {rss0:.1f} MiB  after {rss1:.1f} MiB  ({rss1 - rss0:+.1f} MiB)")
            print(f"fds  before {fds0}  after {fds1}")
            print(f"left behind: {left} (netns {len(inv.netns)}, ports {ports}, ", end="")
            print(f"dirs {len(inv.workdirs)}, leases {leases})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50, help="number of cycles")
    ap.add_argument("--parallel", type=int, default=1, help="cycles run at once")
    ap.add_argument("--chromium", action="store_true", help="with Chromium in the desktop (slower)")
    args = ap.parse_args()
    asyncio.run(main(args.n, max(1, args.parallel), args.chromium))
