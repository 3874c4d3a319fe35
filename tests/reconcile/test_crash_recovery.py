"""Chaos: kill -9 the controller while sessions are being created, restart it, and find zero leaks after reconcile:
sandboxes that were ready survive the crash and are adopted (their agents answer the stored secret), boots the
crash interrupted are failed with a reason and removed; once every session is cancelled, nothing is left.

The controller runs as a real separate process (`hearth serve`, tests/restartkit.py); sizes scale with
HEARTH_CHAOS_SESSIONS (default 6, the issue's figure is 20).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.reconcile.inventory import scan_sync
from hearth.store.db import Database
from hearth.store.models import LeaseRow, SessionRow
from tests.live import scaled
from tests.restartkit import Controller, sandbox_pids
from tests.waits import eventually_sync

pytestmark = [pytest.mark.netns, pytest.mark.slow]
SESSIONS = int(os.environ.get("HEARTH_CHAOS_SESSIONS", str(scaled(20))))  # 20 at HEARTH_CHAOS_SCALE=1


def test_kill_9_during_creates_then_restart_leaves_nothing(restart_settings: Settings, tmp_path: Path) -> None:
    s = restart_settings
    # Creates as fast as the test can send them (restartkit: no rate limit); the reconciler runs once, at start.
    ctl = Controller(s, tmp_path / "controller.log", SESSIONS, extra_env={"HEARTH_RECONCILE_INTERVAL": "3600"})
    try:
        ctl.start()
        ids = []
        with httpx.Client(base_url=ctl.base, headers=ctl.headers, timeout=10) as http:
            for i in range(SESSIONS):
                r = http.post("/api/auth/start", json={"user_id": f"chaos{i}"})
                assert r.status_code == 201, r.text
                ids.append(r.json()["session_id"])
                if i == SESSIONS // 2:
                    time.sleep(0.5)  # let some sandboxes get further along than others
        ctl.stop(signal.SIGKILL, 10)
    finally:
        ctl.kill()

    # A foreign namespace that merely looks similar must survive the reconciler untouched.
    foreign = f"{s.fabric_netns}-x1"
    netlink.create_netns(foreign)
    # An orphan hearth namespace with no lease and no session must be reclaimed.
    orphan = f"{s.fabric_netns}-s{s.pool_size - 1}"
    netlink.create_netns(orphan)
    try:
        before = scan_sync(s)
        print(
            f"\nafter kill -9: {len(before.netns)} sandbox netns, {sum(map(len, before.links.values()))} ports, "
            f"{len(before.workdirs)} dirs, {len(sandbox_pids(s))} sandbox processes"
        )
        try:
            ctl.start()  # /health does not wait for the reconciler
            db = Database(s.db_url)

            def recovered() -> bool:
                rows = db.call(lambda d: [(r.id, r.status, r.reason) for r in d.query(SessionRow).all()])
                leased = db.call(lambda d: {r.slot for r in d.query(LeaseRow).all()})
                settled = all(status in ("ready", "failed") for _, status, _ in rows)
                slots = scan_sync(s).slots()
                assert settled and slots == leased and not netlink.netns_exists(orphan), (rows, slots, leased)
                return True

            eventually_sync(recovered, 120, "every session settled, every leased slot and no other", interval=0.5)
            rows = db.call(lambda d: [(r.id, r.status, r.reason) for r in d.query(SessionRow).all()])
            assert sorted(r[0] for r in rows) == sorted(ids)
            for sid, status, reason in rows:
                assert status in ("ready", "failed"), (sid, status)
                if status == "failed":
                    assert reason and reason.startswith("[driver]"), reason
            ready = [r for r in rows if r[1] == "ready"]
            inv = scan_sync(s)
            leases = db.call(lambda d: [(r.slot, r.session_id) for r in d.query(LeaseRow).all()])
            assert len(inv.netns) == len(ready), inv.netns
            assert sum(map(len, inv.links.values())) == len(ready)
            assert len(inv.workdirs) == len(ready)
            assert len(leases) == len(ready)
            assert not netlink.netns_exists(orphan)
            assert netlink.netns_exists(foreign)
            if not ready:
                assert sandbox_pids(s) == []
            else:
                assert sandbox_pids(s), "ready sandboxes outlive the controller"
            print(
                f"after restart + reconcile: {len(ready)} ready (survived, adopted), {len(rows) - len(ready)} failed "
                f"with a reason, leaks: 0"
            )
            with httpx.Client(base_url=ctl.base, headers=ctl.headers, timeout=60) as http:
                for sid, _, _ in ready:  # the adopted sandboxes are this controller's: a cancel removes them
                    assert http.post(f"/api/auth/session/{sid}/cancel").json()["status"] == "cancelled"
        finally:
            ctl.stop(signal.SIGTERM)
        inv = scan_sync(s)
        assert inv.slots() == set(), inv
        assert sandbox_pids(s) == []
    finally:
        netlink.remove_netns(foreign)
        netlink.remove_netns(orphan)
