"""Housekeeping (the watchdog, expiry, the reconciler's pass) reads the store in a fixed number of statements per
tick, whatever the number of sessions: counted with an SQLAlchemy event listener at 5 and at 200 idle session rows
(inserted directly: no sandboxes needed; the driver reports every sandbox alive)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from hearth.clisandbox.manager import CliSandboxes
from hearth.config import Settings
from hearth.gateway.gauge import ViewerGauge
from hearth.lifecycle.sandbox import Kind, SandboxState
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.netns import NetnsDriver
from hearth.session.service import SessionService
from hearth.session.states import Status
from hearth.store.db import Database
from hearth.store.models import LeaseRow, SessionRow
from hearth.vault.store import Vault
from tests.session.servicekit import session_service


class AliveDriver(NetnsDriver):
    """Every sandbox answers alive (the watchdog's process check is not what is counted here)."""

    async def alive(self, spec: SandboxSpec) -> bool:
        return True


@pytest.fixture
def service(make_settings: Callable[..., Settings]) -> Iterator[SessionService]:
    s = make_settings()
    db = Database(s.db_url)
    svc = session_service(s, db, AliveDriver(s))
    try:
        yield svc
    finally:
        db.dispose()


def add_sessions(
    svc: SessionService,
    n: int,
    status: Status = Status.READY,
    age: timedelta = timedelta(0),
    seen: timedelta | None = None,
) -> list[str]:
    """`n` live session rows of this node with their leases (as admission and a boot leave them), run by this
    controller: created `age` ago, last seen `seen` ago."""
    s = svc.settings
    now = datetime.now(UTC)
    taken = svc.db.call(lambda db: set(db.scalars(select(LeaseRow.slot))))
    free = [i for i in range(svc.ipam.size) if i not in taken][:n]
    ids = [str(uuid.uuid4()) for _ in free]

    def insert(db: Any) -> None:
        for sid, index in zip(ids, free, strict=True):
            ip = str(svc.ipam.slot(index).ip)
            db.add(
                SessionRow(
                    id=sid,
                    node_id=s.node_id,
                    user_id=f"u-{sid[:8]}",
                    provider="example",
                    mode="remote_browser",
                    status=status.value,
                    driver="netns",
                    fabric=s.fabric_netns,
                    slot=index,
                    sandbox_ip=ip,
                    created_at=now - age,
                    last_seen_at=now - (seen if seen is not None else age),
                )
            )
            db.add(LeaseRow(node_id=s.node_id, fabric=s.fabric_netns, slot=index, ip=ip, session_id=sid))

    svc.db.call(insert)
    for sid, index in zip(ids, free, strict=True):  # as if this controller booted (or adopted) them
        sb = svc.sandboxes._sandbox(sid, Kind.SESSION, svc.sandboxes.spec(sid, svc.ipam.slot(index), secret="x"))
        sb.state = SandboxState.RUNNING
        svc.sandboxes._live[sid] = sb
    return ids


class Statements:
    """Counts the SQL statements the store's engine executes."""

    def __init__(self, db: Database) -> None:
        self.n = 0
        self.seen: list[str] = []
        event.listen(db.engine, "before_cursor_execute", self._one)

    def _one(self, *args: Any) -> None:
        self.n += 1
        self.seen.append(str(args[2]).split("\n")[0][:80])


async def tick(svc: SessionService, reconciler: Reconciler) -> int:
    """One housekeeping pass as `hearth serve` runs it (hearth/controller.py `housekeeping`), its statement count."""
    counter = Statements(svc.db)
    try:
        await svc.records.record_pending()
        await reconciler.run_once()
        await svc.housekeeping.check_alive()
        await svc.housekeeping.expire_due()
        await svc.housekeeping.pool_tick()
        clis = CliSandboxes(svc.settings, svc.db, svc.sandboxes)
        await clis.stop_idle()
        await clis.install_handed_over(Vault(svc.db, svc.sandboxes.ring))
    finally:
        event.remove(svc.db.engine, "before_cursor_execute", counter._one)
    return counter.n


async def test_a_housekeeping_tick_costs_the_same_statements_at_5_and_at_200_sessions(service: SessionService) -> None:
    svc = service
    reconciler = Reconciler(svc, svc.records, svc.boots)
    add_sessions(svc, 5)
    await tick(svc, reconciler)  # the first pass (adoption) warms up
    at_5 = await tick(svc, reconciler)
    add_sessions(svc, 195)
    at_200 = await tick(svc, reconciler)
    assert svc.db.call(lambda db: db.query(SessionRow).filter(SessionRow.status == "ready").count()) == 200
    assert at_200 == at_5, f"a housekeeping tick ran {at_5} statements at 5 sessions, {at_200} at 200"
    assert at_5 <= 12, at_5


async def test_expiry_still_ends_exactly_the_sessions_due(service: SessionService) -> None:
    """The set-based query keeps the rules: past the lifetime → expired (even booting or watched); idle past the
    idle timeout with no viewer → expired; booting, watched or recently seen → kept."""
    svc = service
    s = svc.settings
    ttl, idle = timedelta(seconds=s.session_ttl), timedelta(seconds=s.idle_timeout)
    fresh = add_sessions(svc, 2)
    old = add_sessions(svc, 1, age=ttl + timedelta(seconds=5))
    old_booting = add_sessions(svc, 1, Status.STARTING, age=ttl + timedelta(seconds=5))
    idle_rows = add_sessions(svc, 2, age=idle + timedelta(seconds=5))
    idle_booting = add_sessions(svc, 1, Status.STARTING, age=idle + timedelta(seconds=5))
    watched = add_sessions(svc, 1, age=idle + timedelta(seconds=5))
    heartbeat = add_sessions(svc, 1, age=idle + timedelta(seconds=5), seen=timedelta(seconds=1))
    assert isinstance(svc.housekeeping.viewers, ViewerGauge)
    svc.housekeeping.viewers.add(watched[0])
    for sid in [*old, *old_booting, *idle_rows]:  # ending removes their (imagined) sandboxes: nothing to remove
        svc.sandboxes._live.pop(sid)
    assert await svc.housekeeping.expire_due() == 4
    status = dict(svc.db.call(lambda db: list(db.execute(select(SessionRow.id, SessionRow.status)))))
    reasons = dict(svc.db.call(lambda db: list(db.execute(select(SessionRow.id, SessionRow.reason)))))
    for sid in [*old, *old_booting]:
        assert status[sid] == "expired" and "lifetime" in (reasons[sid] or "")
    for sid in idle_rows:
        assert status[sid] == "expired" and "idle for more than" in (reasons[sid] or "")
    for sid in [*fresh, *idle_booting, *watched, *heartbeat]:
        assert status[sid] in ("ready", "starting"), (sid, status[sid], reasons[sid])
