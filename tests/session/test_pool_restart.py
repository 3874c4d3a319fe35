"""A pooled sandbox is reconciled after a crash like any sandbox: the controller is SIGKILLed with one sandbox in the
pool, the next controller adopts it (same launcher PID) and hands it out; a `--drain` stop then ends it all."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.lifecycle.sandbox import SandboxState
from hearth.store.db import Database
from hearth.store.models import SandboxRow
from tests.restartkit import Controller, assert_nothing_left
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def pooled_rows(db: Database) -> dict[str, int | None]:
    return db.call(
        lambda d: {r.owner_id: r.pid for r in d.query(SandboxRow).filter_by(state=SandboxState.POOLED.value).all()}
    )


async def test_pooled_sandbox_is_adopted_after_sigkill(restart_settings: Settings, tmp_path: Path) -> None:
    s = restart_settings
    ctl = Controller(s, tmp_path / "controller.log", 2, extra_env={"HEARTH_POOL_SIZE": "remote_browser:1"})
    db = Database(s.db_url)
    try:
        await asyncio.to_thread(ctl.start)
        before = await eventually(lambda: pooled_rows(db) or None, 90, "a pooled sandbox recorded", interval=0.1)
        assert len(before) == 1
        ctl.kill()  # SIGKILL: no drain, no cleanup
        await asyncio.to_thread(ctl.start)
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:

            def adopted() -> bool:
                log = ctl.log.read_text(errors="replace")
                assert "pooled sandbox adopted" in log, log[-3000:]  # the last look, should it time out
                return True

            await eventually(adopted, 60, "the pooled sandbox adopted", interval=0.2)
            assert pooled_rows(db) == before  # the same sandbox (same launcher PID), still pooled
            r = await http.post("/api/auth/start", json={"user_id": "after-crash"})
            assert r.status_code == 201, r.text
            body = await wait_session(http, r.json()["session_id"])
            assert body["status"] == "ready", body
            rows = db.call(lambda d: {x.owner_id: x.pid for x in d.query(SandboxRow).all()})
            assert rows.get(str(body["session_id"])) == next(iter(before.values()))  # the adopted one, handed out
            metrics = (await http.get("/metrics")).text
            assert 'hearth_pool_handouts_total{result="hit"} 1.0' in metrics
        ctl.stop(signal.SIGTERM)
        await asyncio.to_thread(ctl.start, 60, True)  # --drain: its stop ends the sessions and the pool
        await eventually(lambda: pooled_rows(db) or None, 90, "a pooled sandbox recorded", interval=0.1)
        await asyncio.to_thread(ctl.stop, signal.SIGTERM)
        await asyncio.to_thread(assert_nothing_left, s, db)
    finally:
        ctl.kill()
        db.dispose()
