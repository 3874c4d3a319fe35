"""Soak: N create → ready → cancel cycles through the real API leave nothing behind and keep memory flat.

N = 20 × HEARTH_CHAOS_SCALE (e.g. HEARTH_CHAOS_SCALE=50 for 1000 cycles). HEARTH_CHROMIUM=false keeps a cycle short
(the desktop, VNC server and the controller's own RFB handshake still run). Leaks counted after the last cycle:
sandbox namespaces, fabric ports, sandbox directories, leases, processes (descendants of this process, which runs
the controller, and anything living in a sandbox namespace), open file descriptors and per-session state of the
session service. RSS (VmRSS of this process) before/after is printed and bounded loosely.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from tests.conftest import running_controller
from tests.live import descendants, leaks, open_fds, rss_kib, scaled, start_ready
from tests.waits import polite

pytestmark = [pytest.mark.netns, pytest.mark.slow]
CYCLES = scaled(20)
WARMUP = 2
RSS_SLACK_MIB = 50 if CYCLES <= 100 else 150


async def test_create_ready_cancel_cycles_leak_nothing(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
    ):
        svc = ctl.ctl.service

        async def cycle(i: int) -> None:
            live = await start_ready(http, settings, f"cycle{i % 3}")
            r = await polite(lambda: http.post(f"/api/auth/session/{live.session_id}/cancel"))
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

        for i in range(WARMUP):  # first-use allocations (imports, caches, connection pools) are not leaks
            await cycle(i)
        procs0, fds0, rss0 = descendants(), open_fds(), rss_kib()
        t0 = time.monotonic()
        for i in range(CYCLES):
            await cycle(i)
        elapsed = time.monotonic() - t0
        found = await leaks(ctl, procs0)
        fds1, rss1 = open_fds(), rss_kib()
        state = {"boots": len(svc.boots._tasks), "sandboxes": len(svc.sandboxes.owners()), "stops": len(svc._stops)}
        state["viewers"] = ctl.ctl.viewers.total()
        statuses = svc.records.counts_by_state()
        print(
            f"\ncycles: {CYCLES} (+{WARMUP} warm-up) in {elapsed:.1f}s ({CYCLES / elapsed:.2f}/s)"
            f"\nleaks: {found.total} {found}"
            f"\nfds: {fds0} → {fds1}   per-session state left: {state}   sessions by state: {statuses}"
            f"\nRSS: {rss0 / 1024:.1f} MiB → {rss1 / 1024:.1f} MiB ({(rss1 - rss0) / 1024:+.1f} MiB)"
        )
        assert found.total == 0, found
        assert statuses == {"cancelled": CYCLES + WARMUP}
        assert state == {"boots": 0, "sandboxes": 0, "stops": 0, "viewers": 0}
        assert fds1 <= fds0 + 10, f"file descriptors grew {fds0} → {fds1}"
        assert rss1 - rss0 < RSS_SLACK_MIB * 1024, f"RSS grew {(rss1 - rss0) / 1024:.1f} MiB"
