"""A warm-pool hit is admitted in ONE transaction (hearth/session/admission.py `admit_pooled`): the limits, the
session's row and the claim of the pooled sandbox (its row and lease become the session's) commit together, so a
hand-over writes the store twice up to ready — the admission and the move to READY — instead of three times (lease,
then the claim, then READY). Counted on the engine: every committed transaction that writes and names the session."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from hearth.config import Settings
from hearth.store.models import LeaseRow, SandboxRow, SessionRow
from tests.conftest import running_controller
from tests.waits import eventually, wait_session

pytestmark = [pytest.mark.netns, pytest.mark.slow]


class Transactions:
    """The statements (with their parameters) of each committed transaction on an engine, in commit order."""

    def __init__(self) -> None:
        self.committed: list[list[tuple[str, str]]] = []
        self._lock = threading.Lock()

    def attach(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)

    def _statement(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        conn.info.setdefault("h2-statements", []).append((statement, repr(params)))

    def _commit(self, conn: Any) -> None:
        done = conn.info.pop("h2-statements", [])
        with self._lock:
            self.committed.append(done)

    def _rollback(self, conn: Any) -> None:
        conn.info.pop("h2-statements", None)

    def naming(self, sid: str) -> list[list[tuple[str, str]]]:
        """The committed transactions that write and name `sid` (reads are not counted)."""
        with self._lock:
            named = [t for t in self.committed if any(sid in p for _, p in t)]
        return [t for t in named if any(writes(sql) for sql, _ in t)]


def writes(sql: str) -> bool:
    """A write of the boot's: a viewer's or API reader's touch (`last_seen_at`, the session is watched) is not."""
    return sql.startswith(("INSERT", "UPDATE", "DELETE")) and not sql.startswith(
        "UPDATE sessions SET updated_at=?, last_seen_at=?"
    )


def up_to_ready(transactions: list[list[tuple[str, str]]]) -> list[list[str]]:
    """The transactions up to and including the one that moved the session to READY: each as its SQL."""
    for i, t in enumerate(transactions):
        if any(sql.startswith("UPDATE sessions SET status") and "'ready'" in p for sql, p in t):
            return [[sql for sql, _ in x] for x in transactions[: i + 1]]
    raise AssertionError(f"no move to READY among {transactions}")


async def test_a_pool_hit_is_admitted_and_claimed_in_one_transaction(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_POOL_SIZE="remote_browser:1", HEARTH_CHROMIUM="false")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        pool, db = ctl.ctl.service.pool, ctl.ctl.service.records.db

        def filled() -> bool:
            assert len(pool.ready("remote_browser")) == 1, pool.summary()
            return True

        await eventually(filled, 120, "a warm desktop", interval=0.1)
        pooled = pool.ready("remote_browser")[0]
        seen = Transactions()
        seen.attach(db.engine)

        r = await http.post("/api/auth/start", json={"user_id": "hit"})
        assert r.status_code == 201, r.text
        sid = str(r.json()["session_id"])
        body = await wait_session(http, sid)
        assert body["status"] == "ready", body
        assert pool.hits == 1 and pool.misses == 0
        assert body["sandbox_ip"] == str(pooled.spec.slot.ip)  # the pooled desktop, its address now the session's

        writes = up_to_ready(seen.naming(sid))
        assert len(writes) == 2, "\n\n".join(
            "\n".join(t) for t in writes
        )  # the admission (with the claim), then READY: no transaction in between
        admission = " ".join(writes[0])
        assert "INSERT INTO sessions" in admission and "UPDATE sandboxes" in admission, writes[0]

        def owned(x: Any) -> tuple[object, ...]:
            lease = x.query(LeaseRow).filter(LeaseRow.session_id == sid).one()
            row, sb = x.get(SessionRow, sid), x.get(SandboxRow, sid)
            return lease.slot, row.slot if row else None, sb.state if sb else None, x.get(SandboxRow, pooled.owner)

        lease_slot, row_slot, state, old_row = db.call(owned)
        assert lease_slot == row_slot == pooled.spec.slot.index and state == "running" and old_row is None


async def test_a_pooled_sandbox_is_offered_only_once_its_row_says_pooled(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot moves the sandbox to POOLED in memory, then saves its row: a start between the two found it ready in
    memory, but the claim (`… WHERE state='pooled'`) found nothing — a miss and a cold boot while a warm desktop
    waited. The pool offers a sandbox only once its boot, row included, is over."""
    from hearth.lifecycle.rows import SandboxRows
    from hearth.lifecycle.sandbox import SandboxState

    held = asyncio.Event()
    reached = asyncio.Event()
    save = SandboxRows.save

    async def slow_save(self: SandboxRows, sb: Any, driver: str) -> None:
        if sb.state is SandboxState.POOLED:
            reached.set()
            await held.wait()
        await save(self, sb, driver)

    monkeypatch.setattr(SandboxRows, "save", slow_save)
    settings = make_settings(HEARTH_POOL_SIZE="remote_browser:1", HEARTH_CHROMIUM="false")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        pool = ctl.ctl.service.pool
        await asyncio.wait_for(reached.wait(), 120)  # booted, POOLED in memory, its row not saved yet
        assert pool.ready("remote_browser") == [], pool.summary()
        held.set()

        def filled() -> bool:
            assert len(pool.ready("remote_browser")) == 1, pool.summary()
            return True

        await eventually(filled, 30, "the warm desktop offered once its row is saved", interval=0.05)
        r = await http.post("/api/auth/start", json={"user_id": "hit"})
        assert r.status_code == 201, r.text
        body = await wait_session(http, str(r.json()["session_id"]))
        assert body["status"] == "ready" and pool.hits == 1 and pool.misses == 0, body


async def test_a_hand_over_is_viewed_over_the_standby_connection_before_its_refill_boots(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled desktop's refill ends with the gateway holding an RFB connection to it (hearth/session/standby.py);
    the session it is handed to is viewed over that connection, and its replacement boots only once the session's
    first frame went out (a refill's boot took the CPU that frame needed), not when the session became ready."""
    from hearth.rfb.ws import first_frame
    from hearth.session import pool as pool_module

    monkeypatch.setattr(pool_module, "REFILL_GRACE", 600.0)  # only the first frame can start the refill here
    settings = make_settings(HEARTH_POOL_SIZE="remote_browser:1", HEARTH_CHROMIUM="false")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        pool = ctl.ctl.service.pool
        standby = pool.standby

        def settled() -> bool:
            assert len(pool.ready("remote_browser")) == 1 and pool.filling("remote_browser") == 0, pool.summary()
            assert len(standby) == 1, "the gateway holds no connection to the pooled desktop"
            return True

        await eventually(settled, 120, "a warm desktop with its standby connection", interval=0.1)
        r = await http.post("/api/auth/start", json={"user_id": "viewed"})
        assert r.status_code == 201, r.text
        started = r.json()
        body = await wait_session(http, started["session_id"])
        assert body["status"] == "ready" and pool.hits == 1, body
        await asyncio.sleep(0.5)  # a refill started at ready would be filling by now
        assert pool.summary()["remote_browser"] == {"size": 1, "ready": 0, "filling": 0}, pool.summary()
        url = f"{ctl.ws_base}/api/auth/session/{started['session_id']}/novnc/websock?token={started['viewer_token']}"
        frame = await first_frame(url, 30)
        assert frame.init.width > 0 and frame.rects, frame
        assert len(standby) == 0  # taken by the viewer

        def refilling() -> bool:
            summary = pool.summary()["remote_browser"]
            assert summary["filling"] + summary["ready"] == 1, summary
            return True

        await eventually(refilling, 30, "the refill started by the first frame", interval=0.05)
