"""Limits hold under concurrency: 100 concurrent real HTTP starts against a real controller (real fabric, real
netns sandboxes, rate limit off) admit exactly the limit; the rest get 429/503 with the reason; nothing leaks.

Chromium is off (HEARTH_CHROMIUM=false) only to keep the admitted sandboxes light on this 2-core machine: the
admission path under test is the same.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import func, select

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.store.models import LeaseRow, SessionRow
from tests.conftest import Running, running_controller

pytestmark = [pytest.mark.netns, pytest.mark.slow]
N = 100


async def burst(ctl: Running, users: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(users), max_keepalive_connections=len(users))
    async with httpx.AsyncClient(base_url=ctl.base_url, timeout=120, limits=limits) as http:
        return list(
            await asyncio.gather(
                *(http.post("/api/auth/start", json={"user_id": u}, headers=ctl.headers) for u in users)
            )
        )


async def cancel_all(ctl: Running, responses: list[httpx.Response]) -> None:
    async with httpx.AsyncClient(base_url=ctl.base_url, timeout=120) as http:
        for r in responses:
            if r.status_code == 201:
                c = await http.post(f"/api/auth/session/{r.json()['session_id']}/cancel", headers=ctl.headers)
                assert c.status_code == 200 and c.json()["status"] == "cancelled", c.text


def assert_nothing_left(ctl: Running) -> None:
    s = ctl.settings
    db = ctl.ctl.db
    assert db.call(lambda d: d.scalar(select(func.count()).select_from(LeaseRow))) == 0
    active = db.call(
        lambda d: d.scalar(select(func.count()).select_from(SessionRow).where(SessionRow.status != "cancelled"))
    )
    assert active == 0
    left = [f"{s.fabric_netns}-s{i}" for i in range(s.pool_size) if netlink.netns_exists(f"{s.fabric_netns}-s{i}")]
    assert left == []
    sandboxes = s.data_dir / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []


def refused(responses: list[httpx.Response], status: int, needle: str) -> int:
    n = 0
    for r in responses:
        if r.status_code == status:
            assert needle in r.json()["error"], r.text
            assert int(r.headers["retry-after"]) > 0
            n += 1
    return n


async def test_global_and_per_user_limits_hold_under_100_concurrent_starts(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        MAX_BROWSER_SESSIONS="6", MAX_SESSIONS_PER_USER="3", HEARTH_RATE_LIMIT="0", HEARTH_CHROMIUM="false"
    )
    async with running_controller(settings) as ctl:
        distinct = await burst(ctl, [f"user-{i}" for i in range(N)])
        codes = Counter(r.status_code for r in distinct)
        print(f"\n100 distinct users, MAX_BROWSER_SESSIONS=6: {dict(codes)}")
        assert codes[201] == 6
        assert refused(distinct, 503, "MAX_BROWSER_SESSIONS") == N - 6
        rows = ctl.ctl.db.call(lambda d: d.scalar(select(func.count()).select_from(SessionRow)))
        assert rows == 6  # a refused start leaves no row behind
        await cancel_all(ctl, distinct)
        assert_nothing_left(ctl)

        one = await burst(ctl, ["alice"] * N)
        codes = Counter(r.status_code for r in one)
        print(f"100 starts of one user, MAX_SESSIONS_PER_USER=3: {dict(codes)}")
        assert codes[201] == 3
        assert refused(one, 429, "MAX_SESSIONS_PER_USER") == N - 3
        await cancel_all(ctl, one)
        assert_nothing_left(ctl)


async def test_per_node_limit_holds_under_concurrent_starts(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        MAX_BROWSER_SESSIONS="50",
        HEARTH_MAX_SESSIONS_PER_NODE="4",
        HEARTH_RATE_LIMIT="0",
        HEARTH_CHROMIUM="false",
    )
    async with running_controller(settings) as ctl:
        responses = await burst(ctl, [f"user-{i}" for i in range(40)])
        codes = Counter(r.status_code for r in responses)
        assert codes[201] == 4, dict(codes)
        assert refused(responses, 503, "HEARTH_MAX_SESSIONS_PER_NODE") == 36
        await cancel_all(ctl, responses)
        assert_nothing_left(ctl)
