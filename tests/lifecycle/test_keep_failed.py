"""HEARTH_KEEP_FAILED keeps only failed sandboxes: a cancelled session's sandbox is removed all the same; a failed
one stays — namespace, processes, lease and row — and the reconciler leaves it alone (it used to reclaim it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.lifecycle.sandbox import Final, Kind, SandboxState
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.procs import pids_in_netns, stop_sandbox_processes
from hearth.serving.local import local_controller
from hearth.session.service import SessionService
from hearth.session.states import Status
from hearth.store.models import LeaseRow, SandboxRow
from tests.conftest import running_controller
from tests.live import start_ready
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]


async def failed_by_the_watchdog(svc: SessionService) -> int:
    """The watchdog's count of sessions it failed, asked again until it finds some: a liveness answer may come from a
    pass over /proc up to ALIVE_SCAN_AGE old (one pass per tick), which can predate the processes' stop."""

    async def found() -> int | None:
        return await svc.housekeeping.check_alive() or None

    return await eventually(found, 30, "the watchdog failing a session")


async def test_keep_failed_keeps_failed_sandboxes_only(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_KEEP_FAILED="true", HEARTH_RECONCILE_INTERVAL="3600")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        svc = ctl.ctl.service
        cancelled, failed = [await start_ready(http, settings, f"k{i}") for i in range(2)]

        assert (await http.post(f"/api/auth/session/{cancelled.session_id}/cancel")).json()["status"] == "cancelled"
        assert not netlink.netns_exists(cancelled.netns)

        await stop_sandbox_processes(failed.netns)  # its desktop dies: the watchdog fails the session
        assert await failed_by_the_watchdog(svc) == 1
        assert (await svc.records.get(failed.session_id)).status is Status.FAILED
        await Reconciler(svc, svc.records, svc.boots).run_once()
        assert netlink.netns_exists(failed.netns), "a failed sandbox is kept for debugging"
        sb = svc.sandboxes.get(failed.session_id)
        assert sb is not None and sb.state is SandboxState.KEPT
        leases = await svc.db.run(lambda db: [r.session_id for r in db.query(LeaseRow).all()])
        assert leases == [failed.session_id]
        row = await svc.db.run(lambda db: db.get(SandboxRow, failed.session_id))
        assert row is not None and row.state == "kept"

        await svc.sandboxes.end(failed.session_id, Final.DONE)  # the operator is done debugging
        assert not netlink.netns_exists(failed.netns) and not pids_in_netns(failed.netns)
        assert await svc.db.run(lambda db: db.query(LeaseRow).count()) == 0


async def test_kept_sandboxes_end_with_a_drain_and_when_keeping_is_turned_off(
    make_settings: Callable[..., Settings],
) -> None:
    """A kept sandbox is not forever: a drain (`hearth serve --drain`, the tests' controllers) ends it, and a
    controller started with HEARTH_KEEP_FAILED off reclaims one an earlier controller kept."""
    keep = make_settings(HEARTH_CHROMIUM="false", HEARTH_KEEP_FAILED="true", HEARTH_RECONCILE_INTERVAL="3600")
    async with (
        local_controller(keep, drain=False, remove_fabric=False) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        first = await start_ready(http, keep, "kept-1")
        await stop_sandbox_processes(first.netns)
        assert await failed_by_the_watchdog(ctl.ctl.service) == 1
    assert netlink.netns_exists(first.netns), "a plain stop leaves the kept sandbox"

    off = keep.model_copy(update={"keep_failed": False})
    async with running_controller(off) as ctl:
        db = ctl.ctl.service.db

        async def rows() -> tuple[int, int]:
            return await db.run(lambda d: (d.query(SandboxRow).count(), d.query(LeaseRow).count()))

        for _ in range(300):  # the reconciler runs at start, in the background; the row and lease go last
            if await rows() == (0, 0):
                break
            await asyncio.sleep(0.1)
        assert await rows() == (0, 0)
        assert not netlink.netns_exists(first.netns) and not pids_in_netns(first.netns)

    async with (
        running_controller(keep) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        second = await start_ready(http, keep, "kept-2")
        await stop_sandbox_processes(second.netns)
        assert await failed_by_the_watchdog(ctl.ctl.service) == 1
        assert netlink.netns_exists(second.netns)
    assert not netlink.netns_exists(second.netns), "a drain ends kept sandboxes too"


async def test_a_drain_ends_every_sandbox_on_record_even_one_without_a_live_session(
    make_settings: Callable[..., Settings],
) -> None:
    """A teardown the stop interrupted (the session already ended, its sandbox not yet destroyed) leaves a sandbox
    on record with no live session: a drain ends it too, so nothing outlives `hearth serve --drain`."""
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_RECONCILE_INTERVAL="3600")
    async with running_controller(settings) as ctl:
        mgr = ctl.ctl.service.sandboxes
        lease = await mgr.ipam.acquire("orphan-of-a-teardown")
        sb = await mgr.boot("orphan-of-a-teardown", Kind.SESSION, lease.slot)  # no session row at all
        assert netlink.netns_exists(sb.spec.slot.netns)
    assert not netlink.netns_exists(sb.spec.slot.netns) and not pids_in_netns(sb.spec.slot.netns)
