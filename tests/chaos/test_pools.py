"""No starvation: with asyncio's default thread pool completely blocked, the API still reads the store and a viewer
still connects and streams (store work runs on the store's executor, fabric dials on threads of their own); with the
store's executor completely blocked, fabric dials (readiness gates) still go through."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hearth.config import Settings
from hearth.lifecycle import readiness
from hearth.rfb.ws import first_frame
from hearth.store.db import DB_WORKERS
from tests.conftest import running_controller
from tests.live import start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow]
POOL = 4


async def test_dials_and_store_do_not_starve_each_other(make_settings: Callable[..., Settings]) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(POOL, thread_name_prefix="test-default"))
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_RATE_LIMIT="0")
    async with running_controller(settings) as ctl:
        async with httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http:
            live = await start_ready(http, settings, "u1")
            gate = threading.Event()
            blocked: list[asyncio.Future[bool]] = []
            try:
                # 1. The default pool is full of blocked work: store reads and viewer dials must not need it.
                blocked += [loop.run_in_executor(None, gate.wait) for _ in range(POOL)]
                r = await asyncio.wait_for(http.get(f"/api/auth/session/{live.session_id}"), 30)
                assert r.status_code == 200 and r.json()["status"] == "ready"
                frame = await first_frame(live.ws_url(ctl), timeout=30)
                assert frame.rects, "no framebuffer update while the default pool was blocked"
                assert not any(f.done() for f in blocked)  # the pressure really was there all along

                # 2. The store's executor is full of blocked work: fabric dials must not need it.
                target = ctl.ctl.service.boots.target(await ctl.ctl.service.records.get(live.session_id))
                blocked += [asyncio.ensure_future(ctl.ctl.db.offload(gate.wait)) for _ in range(DB_WORKERS)]
                init = await readiness.wait_rfb(target, time.monotonic() + 30)
                assert init.width > 0
                assert not any(f.done() for f in blocked)
            finally:
                gate.set()
            await asyncio.gather(*blocked)
            assert (await http.post(f"/api/auth/session/{live.session_id}/cancel")).json()["status"] == "cancelled"
