"""Boot storm: N sessions created at once, each with a viewer connecting at once (as a person's page would).
Prints create→ready and create→first-frame p50/max, how many sessions were `queued` and the worst queue position
seen, and failures (a viewer refused with 4408 "not ready in time" counts as one) — for hearth (admission control:
HEARTH_MAX_BOOTS, default the CPU count; browsers after desktops: HEARTH_BROWSER_START=queued, with create → browser
shown) and, in the same run, for the previous design (HEARTH_MAX_BOOTS=N: every boot at once, each with its browser:
HEARTH_BROWSER_START=at_boot), with the ratio.

    sudo .venv/bin/python bench/storm.py -n 60 [--only queued|unbounded] [--max-boots 2] [--store sqlite]

The store is PostgreSQL, as in production at this scale: a fresh database per arm on TEST_DATABASE_URL's server (or
--database-url's), else on a throwaway local cluster; `--store sqlite` measures SQLite instead (60 boots at once then
wait on its one writer: sessions may fail with "[store] … locked by another writer" — a store limit, not the
admission design's). Sandboxes run this host's image (HEARTH_IMAGE_DIR); the first lines say which userspace and store.

Runs its own controllers with their own fabric namespaces (`hearth-b<hex>`) on loopback ports; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time

import httpx

from hearth.rfb.ws import first_frame
from hearth.serving.local import LocalController, local_controller, scratch_settings, userspace
from hearth.store.pglocal import scratch_database


async def one(http: httpx.AsyncClient, ws_base: str, i: int) -> tuple[float, float, str, int, dict[str, float]]:
    """(create→ready, create→first frame, failure or "", queue position at create, stage timings)."""
    t0 = time.monotonic()
    r = await http.post("/api/auth/start", json={"user_id": f"storm-{i}"})
    if r.status_code != 201:
        return float("nan"), float("nan"), f"create {r.status_code}: {r.text[:120]}", 0, {}
    body = r.json()
    sid, position = body["session_id"], body.get("queue_position") or 0
    url = f"{ws_base}/api/auth/session/{sid}/novnc/websock?token={body['viewer_token']}"
    failure = ""
    try:
        await first_frame(url, 180)
    except Exception as exc:  # a refused viewer (e.g. 4408) is what this bench counts
        failure = f"viewer: {type(exc).__name__}: {str(exc)[:120]}"
    total = time.monotonic() - t0
    view = (await http.get(f"/api/auth/session/{sid}")).json()
    ready = float(view["timings"].get("rfb", float("nan")))
    if view["status"] != "ready" and not failure:
        failure = f"session {view['status']}: {view.get('reason')}"
    return ready, total, failure, int(position), dict(view["timings"])


async def browsers_shown(lc: LocalController, n: int, timeout: float = 240.0) -> list[float]:
    """create → browser on the desktop (timings["browser"]) of every ready session, once all are up (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        views = [v for v in await lc.ctl.service.records.list_active() if v.status.value == "ready"]
        shown = [float(v.timings["browser"]) for v in views if "browser" in v.timings]
        if len(shown) >= len(views) or time.monotonic() > deadline:
            return shown
        await asyncio.sleep(0.5)


async def storm(n: int, max_boots: int, browser_start: str, label: str, store: str, server: str) -> float:
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(scratch_database(server)) if store == "postgresql" else ""
        return await _storm(n, max_boots, browser_start, label, database)


async def _storm(n: int, max_boots: int, browser_start: str, label: str, database: str) -> float:
    env = {
        "MAX_BROWSER_SESSIONS": str(n + 1),
        "MAX_SESSIONS_PER_USER": "1",
        "HEARTH_RATE_LIMIT": "0",
        "HEARTH_READY_TIMEOUT": "120",
        "HEARTH_MAX_BOOTS": str(max_boots),
        "HEARTH_BROWSER_START": browser_start,
    }
    if database:
        env["HEARTH_DATABASE_URL"] = database
    browsers: list[float] = []
    with scratch_settings(env, prefix="hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        print(f"[{label}] store: {'PostgreSQL (a fresh database)' if database else 'SQLite'}")
        async with local_controller(settings) as lc:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=180, limits=limits) as http:
                results = await asyncio.gather(*(one(http, lc.ws_base, i) for i in range(n)))
                if browser_start == "queued":
                    browsers = await browsers_shown(lc, n)
                active = [v.id for v in await lc.ctl.service.records.list_active()]
                for sid in active:
                    await http.post(f"/api/auth/session/{sid}/cancel")
    readies = [r[0] for r in results if r[0] == r[0]]
    totals = [r[1] for r in results if not r[2]]
    failures = [r[2] for r in results if r[2]]
    queued = [r[3] for r in results if r[3]]
    print(f"[{label}] {n} creates at once, HEARTH_MAX_BOOTS={max_boots}, HEARTH_BROWSER_START={browser_start}")
    if readies:
        print(f"[{label}] create→ready        p50 {statistics.median(readies):6.2f}s  max {max(readies):6.2f}s")
    if totals:
        print(f"[{label}] create→first-frame  p50 {statistics.median(totals):6.2f}s  max {max(totals):6.2f}s")
    if browsers:
        print(
            f"[{label}] create→browser shown p50 {statistics.median(browsers):6.2f}s  max {max(browsers):6.2f}s "
            f"({len(browsers)} browsers; with at_boot the browser starts with the desktop)"
        )
    stages: dict[str, list[float]] = {}
    for r in results:
        prev = r[4].get("queued", 0.0)
        for stage, at in sorted(r[4].items(), key=lambda kv: kv[1]):
            if stage not in ("lease", "queued", "browser"):
                stages.setdefault(stage, []).append(at - prev)
                prev = at
    shown = "  ".join(f"{k} {statistics.median(v):.3f}s" for k, v in stages.items())
    print(f"[{label}] boot stages (p50 of each step, from its turn): {shown}")
    print(f"[{label}] queued at create: {len(queued)} (worst position {max(queued, default=0)})")
    print(f"[{label}] failures: {len(failures)}")
    for f in failures[:10]:
        print(f"[{label}]   {f}")
    print()
    return statistics.median(readies) if readies else float("nan")


async def main(n: int, max_boots: int, only: str, store: str, server: str) -> None:
    got: dict[str, float] = {}
    if only in ("", "queued"):
        got["queued"] = await storm(n, max_boots, "queued", "queued", store, server)
    if only in ("", "unbounded"):
        got["unbounded"] = await storm(n, n, "at_boot", "unbounded", store, server)
    if len(got) == 2:
        print(
            f"create→ready p50 under the storm: hearth (boot queue, browsers after desktops) {got['queued']:.2f}s, "
            f"the previous design (every boot at once, browser with the desktop) {got['unbounded']:.2f}s, "
            f"ratio {got['queued'] / got['unbounded']:.2f}×"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=60, help="sessions created at once")
    ap.add_argument("--max-boots", type=int, default=max(1, os.cpu_count() or 1), help="HEARTH_MAX_BOOTS")
    ap.add_argument("--only", choices=("queued", "unbounded"), default="")
    ap.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql", help="the controllers' store")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL", ""),
        help="a PostgreSQL server's admin URL (default TEST_DATABASE_URL; neither: a throwaway local cluster)",
    )
    a = ap.parse_args()
    asyncio.run(main(a.n, a.max_boots, a.only, a.store, a.database_url))
