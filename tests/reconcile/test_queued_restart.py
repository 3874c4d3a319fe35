"""Sessions still `queued` when the controller is killed -9 boot after the restart (issue 20, item 4): they were
admitted (limits, lease, row) but their boot had not begun, so the next controller puts them back in its boot queue,
oldest first, instead of failing them. A boot the kill interrupted (`starting`) is failed with a reason and removed.

The controller is a real separate process (`hearth serve`, tests/restartkit.py) with one boot at a time
(HEARTH_MAX_BOOTS=1), so every create after the first waits in line. Twice: desktops on the netns driver (root), and
direct-mode sign-ins on the loopback driver (no root: the reconciler's logic; the example IdP keeps their CLIs
waiting for the person, in this process).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.reconcile.inventory import scan_sync
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, SessionRow
from tests.conftest import loopback_env
from tests.restartkit import Controller, remove_everything, sandbox_pids, start_idp
from tests.waits import eventually_sync

pytestmark = [pytest.mark.slow]
CREATES = 4
BOOTED = ("ready", "awaiting_user")  # a desktop is ready; a direct sign-in goes on to wait for the person


def _rows(db: Database) -> dict[str, tuple[str, str | None]]:
    return db.call(lambda d: {r.id: (r.status, r.reason) for r in d.query(SessionRow).all()})


@pytest.fixture(params=[pytest.param("netns", marks=pytest.mark.netns), "loopback"])
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    """The restart kit's settings (tests/conftest.py `restart_settings`) on the netns or the loopback driver."""
    s = make_settings(**(loopback_env() if request.param == "loopback" else {}))
    s.data_dir.mkdir(parents=True, exist_ok=True)
    idp = start_idp(s) if request.param == "loopback" else None
    yield s
    if idp is not None:
        idp[0].shutdown()
        idp[0].server_close()
    remove_everything(s)


def test_queued_sessions_boot_after_kill_9(settings: Settings, tmp_path: Path) -> None:
    s = settings
    log = tmp_path / "controller.log"
    ctl = Controller(s, log, CREATES, extra_env={"HEARTH_MAX_BOOTS": "1", "HEARTH_RECONCILE_INTERVAL": "3600"})
    db = Database(s.db_url)
    start = {"provider": "example"} if s.driver == "loopback" else {}  # a direct session signs in to a provider
    try:
        ctl.start()
        with httpx.Client(base_url=ctl.base, headers=ctl.headers, timeout=10) as http:
            answers = [http.post("/api/auth/start", json={"user_id": f"q{i}", **start}) for i in range(CREATES)]
        ctl.stop(signal.SIGKILL, 10)
    finally:
        ctl.kill()
    for r in answers:
        assert r.status_code == 201, r.text
    at_kill = _rows(db)
    queued = sorted(sid for sid, (status, _) in at_kill.items() if status == "queued")
    # One boot at a time and creates far faster than a boot: the line cannot have emptied before the kill.
    assert queued, f"no session was queued when the controller was killed: {at_kill}"
    leased = db.call(lambda d: {r.session_id for r in d.query(LeaseRow).all()})
    assert set(queued) <= leased, "a queued session holds its lease across the kill"

    try:
        ctl.start()  # /health does not wait for the reconciler

        def booted() -> bool:
            rows = _rows(db)
            assert all(status in (*BOOTED, "failed") for status, _ in rows.values()), rows  # the last look
            return True

        eventually_sync(booted, 180, "every session booted or failed", interval=0.5)
        rows = _rows(db)
        for sid in queued:  # every session that was waiting in line was booted, none failed
            status, reason = rows[sid]  # (awaiting_user's reason is the sign-in page it waits on)
            assert status in BOOTED and (reason is None or status == "awaiting_user"), (sid, rows[sid])
        for sid, (status, reason) in rows.items():
            if sid not in queued:  # the one booting (or already ready) at the kill: adopted, or failed with a reason
                assert status in BOOTED or (status == "failed" and reason and "restarted" in reason), (sid, status)
        for sid in queued:  # its timeline: queued → starting → ready, under the second controller
            names = db.call(
                lambda d, i=sid: [
                    e.name for e in d.query(EventRow).filter(EventRow.session_id == i, EventRow.kind == "state")
                ]  # type: ignore[misc]
            )
            assert names[names.index("starting") :][:2] == ["starting", "ready"], names
        assert "queued session admitted again after a controller restart" in log.read_text()
        ready = [sid for sid, (status, _) in rows.items() if status in BOOTED]
        assert len(scan_sync(s).slots()) == len(ready)
        with httpx.Client(base_url=ctl.base, headers=ctl.headers, timeout=60) as http:
            for sid in ready:
                assert http.post(f"/api/auth/session/{sid}/cancel").json()["status"] == "cancelled"
    finally:
        ctl.stop(signal.SIGTERM)
    assert scan_sync(s).slots() == set()
    assert sandbox_pids(s) == []
    assert db.call(lambda d: d.query(LeaseRow).count()) == 0
