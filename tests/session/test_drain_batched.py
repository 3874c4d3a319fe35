"""A drain's group commits (`SessionService.shutdown`, issue 25 item 2): sessions move to `cancelled` a batch per
transaction and their sandboxes' rows and leases go in shared transactions — yet every session is recorded as if
ended one by one (state, reason, timeline entry, webhook, change notification, stop event) and nothing is left (no
sandbox row, no lease, every sandbox destroyed). A store that cannot take a batch: its sessions take the one-by-one
path (ended unrecorded, recorded once the store is back). No root: a driver that records its destroys."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, select

from hearth.config import Settings
from hearth.errors import StoreError
from hearth.lifecycle.sandbox import Kind, SandboxState
from hearth.sandbox.base import Driver, SandboxInfo, SandboxSpec, StageMark
from hearth.session.service import DRAIN_REASON, SessionService
from hearth.session.states import Status
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, OutboxRow, SandboxRow, SessionRow
from tests.session.servicekit import session_service

WEBHOOK_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


class RecordingDriver(Driver):
    name = "recording"

    def __init__(self) -> None:
        self.destroyed: list[str] = []

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        raise AssertionError("nothing boots in these tests")

    async def destroy(self, spec: SandboxSpec) -> None:
        self.destroyed.append(spec.session_id)

    async def alive(self, spec: SandboxSpec) -> bool:
        return spec.session_id not in self.destroyed


@pytest.fixture
def service(make_settings: Callable[..., Settings]) -> Iterator[SessionService]:
    """SQLite, or PostgreSQL in scripts/test.sh's second pass (the store marker: tests/conftest.py)."""
    settings = make_settings(HEARTH_WEBHOOK_URL="http://127.0.0.1:9/hook", HEARTH_WEBHOOK_SECRET=f"whsec_{WEBHOOK_KEY}")
    db = Database(settings.db_url)
    try:
        yield session_service(settings, db, RecordingDriver())
    finally:
        db.dispose()


async def add_running(svc: SessionService, n: int) -> list[str]:
    """`n` ready sessions of this node, each with its lease, its sandbox row and a sandbox this controller runs with
    its cleanup stack (as a boot or an adoption leaves them)."""
    s, now = svc.settings, datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(n)]

    def insert(db: Any) -> None:
        for index, sid in enumerate(ids):
            ip = str(svc.ipam.slot(index).ip)
            db.add(
                SessionRow(
                    id=sid,
                    node_id=s.node_id,
                    user_id=f"u{index}",
                    provider="example",
                    mode="direct",
                    status=Status.READY.value,
                    driver="recording",
                    fabric=s.fabric_netns,
                    slot=index,
                    sandbox_ip=ip,
                    created_at=now,
                    last_seen_at=now,
                )
            )
            db.add(LeaseRow(node_id=s.node_id, fabric=s.fabric_netns, slot=index, ip=ip, session_id=sid))

    svc.db.call(insert)
    for index, sid in enumerate(ids):
        mgr = svc.sandboxes
        sb = mgr._sandbox(sid, Kind.SESSION, mgr.spec(sid, svc.ipam.slot(index), secret="x"), SandboxState.RUNNING)
        await mgr.rows.save(sb, "recording")
        sb.cleanup = mgr._cleanup_of(sb)
        mgr._live[sid] = sb
    return ids


def left(svc: SessionService) -> tuple[int, int]:
    """(sandbox rows, leases) still in the store."""
    rows = svc.db.call(lambda db: len(list(db.scalars(select(SandboxRow.owner_id)))))
    leases = svc.db.call(lambda db: len(list(db.scalars(select(LeaseRow.session_id)))))
    return rows, leases


def recorded(svc: SessionService, sid: str) -> tuple[list[tuple[str, str, str | None]], list[dict[str, Any]]]:
    """The session's timeline (kind, name, detail) and its webhook bodies' data without ids."""

    def q(db: Any) -> tuple[list[tuple[str, str, str | None]], list[dict[str, Any]]]:
        events = [(e.kind, e.name, e.detail) for e in db.scalars(select(EventRow).where(EventRow.session_id == sid))]
        hooks = []
        for o in db.scalars(select(OutboxRow).where(OutboxRow.stream == sid).order_by(OutboxRow.id)):
            data = json.loads(o.body)["data"]
            hooks.append({k: v for k, v in data.items() if k not in ("session_id", "user_id")} | {"type": o.type})
        return events, hooks

    return svc.db.call(q)


async def test_a_batched_drain_records_every_session_and_leaves_nothing(service: SessionService) -> None:
    svc = service
    one_by_one, *ids = await add_running(svc, 121)
    await svc.end(one_by_one, Status.CANCELLED, DRAIN_REASON)  # the reference: ended alone
    waiters = {sid: svc.records.changes.waiter(sid) for sid in ids}
    stops = {sid: svc.stop_event(sid) for sid in ids}
    commits = [0]

    def count(*_: Any) -> None:
        commits[0] += 1

    event.listen(svc.db.engine, "commit", count)
    try:
        await svc.shutdown()
    finally:
        event.remove(svc.db.engine, "commit", count)

    views = [await svc.records.get(sid) for sid in ids]
    assert {v.status for v in views} == {Status.CANCELLED}
    assert {v.reason for v in views} == {DRAIN_REASON}
    alone = recorded(svc, one_by_one)
    assert alone[0][-1] == ("state", "cancelled", DRAIN_REASON) and alone[1][-1]["type"] == "session.cancelled"
    for sid in ids:  # the same timeline entry and webhook as a session ended alone
        assert recorded(svc, sid) == alone
    assert all(ev.is_set() for ev in waiters.values())  # change notifications: status streams see the end
    assert all(ev.is_set() for ev in stops.values())  # viewers close
    assert sorted(svc.driver.destroyed) == sorted([one_by_one, *ids])  # type: ignore[attr-defined]
    assert left(svc) == (0, 0)
    assert svc.sandboxes.owners() == []
    # one by one, each session took ~4 transactions (read, move, row delete, lease release): ~480 here
    print(f"\ndrain of {len(ids)}: {commits[0]} transactions")
    assert commits[0] < len(ids)


async def test_a_drain_the_store_refuses_ends_each_session_unrecorded_then_records_it(
    service: SessionService, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = service
    ids = await add_running(svc, 30)

    async def refused(*_: Any, **__: Any) -> None:
        raise StoreError("the state store is unavailable: test")

    async def get_refused(*_: Any, **__: Any) -> None:
        raise StoreError("the state store is unavailable: test")

    real_get = svc.records.get
    monkeypatch.setattr(svc.records, "end_many", refused)
    monkeypatch.setattr(svc.records, "get", get_refused)
    await svc.shutdown()  # never raises: the sandboxes go all the same
    assert sorted(svc.driver.destroyed) == sorted(ids)  # type: ignore[attr-defined]
    assert sorted(svc.records.unrecorded) == sorted(ids)
    monkeypatch.setattr(svc.records, "get", real_get)
    assert await svc.records.record_pending() == len(ids)  # the store is back
    assert {(await svc.records.get(sid)).status for sid in ids} == {Status.CANCELLED}
    assert left(svc) == (0, 0)
