"""100 concurrent starts at a pooled mode: the admission limits hold exactly, each pooled desktop goes to one session
only, the rest of the admitted boot cold, every refusal names its limit, and nothing is left behind.

MAX_BROWSER_SESSIONS=6 and MAX_SESSIONS_PER_USER=1 over 50 users × 2 starts, a pool of 2 desktops (no Chromium: the
desktop, Xvnc and the agent still run). The API's rate limit is off here (its own tests cover it): every one of the
100 requests reaches the admission at once. It runs on PostgreSQL as well (the store pass), where row locks, not
SQLite's one writer, order the admissions.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from tests.conftest import running_controller
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.store]  # admission under concurrency: on PostgreSQL too

STARTS, USERS, CAP, POOL = 100, 50, 6, 2


async def test_100_concurrent_starts_at_a_pooled_mode_keep_every_limit(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        HEARTH_POOL_SIZE=f"remote_browser:{POOL}",
        HEARTH_CHROMIUM="false",
        MAX_BROWSER_SESSIONS=str(CAP),
        MAX_SESSIONS_PER_USER="1",
        HEARTH_RATE_LIMIT="0",
    )
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
    ):
        pool = ctl.ctl.service.pool

        def settled() -> bool:
            assert len(pool.ready("remote_browser")) == POOL and pool.filling("remote_browser") == 0, pool.summary()
            return True

        await eventually(settled, 120, "a full warm pool", interval=0.1)
        pooled_ips = {str(sb.spec.slot.ip) for sb in pool.ready("remote_browser")}

        answers = await asyncio.gather(
            *(http.post("/api/auth/start", json={"user_id": f"u{i % USERS}"}) for i in range(STARTS))
        )
        codes = Counter(r.status_code for r in answers)
        assert codes[201] == CAP and codes[201] + codes[429] + codes[503] == STARTS, codes
        for r in answers:
            if r.status_code != 201:
                reason = r.text
                assert "MAX_SESSIONS_PER_USER" in reason or "MAX_BROWSER_SESSIONS" in reason, reason
        admitted = [r.json() for r in answers if r.status_code == 201]
        bodies = await asyncio.gather(*(wait_session(http, a["session_id"], timeout=120) for a in admitted))
        assert all(b["status"] == "ready" for b in bodies), bodies
        assert len({b["user_id"] for b in bodies}) == CAP  # one session per user
        ips = [b["sandbox_ip"] for b in bodies]
        assert len(set(ips)) == CAP, ips  # no address (slot) twice
        assert pooled_ips <= set(ips), (pooled_ips, ips)  # each pooled desktop handed out, to one session only
        assert pool.hits == POOL and pool.misses == CAP - POOL, (pool.hits, pool.misses)

        await asyncio.gather(*(http.post(f"/api/auth/session/{a['session_id']}/cancel") for a in admitted))
        service = ctl.ctl.service

        def nothing_left() -> bool:
            live = [o for o in service.sandboxes.owners() if not o.startswith("pool-")]
            assert live == [] and service.records.counts_by_state().get("ready", 0) == 0, live
            return True

        await eventually(nothing_left, 60, "every admitted session's sandbox removed", interval=0.1)
