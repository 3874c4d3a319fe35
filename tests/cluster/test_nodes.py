"""Nodes in the shared store: registration, heartbeats, death by silence (sessions ended naming the node, leases of
other nodes untouched), drain, and a node's reconciler that never touches another node's rows.

Real store (SQLite here; in scripts/test.sh's second pass a fresh PostgreSQL database per test)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from hearth.cluster import nodes
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.fabric.ipam import Ipam
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.netns import NetnsDriver
from hearth.session import admission
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, NodeRow, SessionRow
from hearth.store.nodestates import NodeState
from tests.session.servicekit import session_service


@pytest.fixture
def db(make_settings: Callable[..., Settings]) -> Iterator[Database]:
    d = Database(make_settings().db_url)
    yield d
    d.dispose()


def reg(node_id: str, pool: int = 4, capacity: int | None = None) -> nodes.Registration:
    return nodes.Registration(node_id, f"http://{node_id}:4000", capacity or pool, pool, ("netns",), "0.1.0")


def admit(db: Database, s: Settings, user: str = "u") -> str:
    sid = str(uuid.uuid4())
    admission.admit(db, Ipam(s, db), s, sid, user, None, "remote_browser", "netns")
    return sid


def test_register_heartbeat_and_list(db: Database, make_settings: Callable[..., Settings]) -> None:
    assert nodes.heartbeat(db, reg("h0")) is None  # first beat registers
    assert nodes.heartbeat(db, reg("h0")) is NodeState.UP
    s = make_settings(HEARTH_NODE_ID="h0", MAX_SESSIONS_PER_USER="5")
    admit(db, s)
    nodes.heartbeat(db, reg("h0"))
    (view,) = db.call(nodes.list_nodes)
    assert (view.id, view.state, view.capacity, view.free_slots, view.active) == ("h0", NodeState.UP, 4, 3, 1)
    assert view.drivers == ("netns",) and view.address == "http://h0:4000"


def test_a_silent_node_is_marked_down_its_sessions_end_naming_it(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    for n in ("h0", "h1"):
        nodes.heartbeat(db, reg(n))
    s0 = make_settings(HEARTH_NODE_ID="h0")
    s1 = make_settings(HEARTH_NODE_ID="h1", HEARTH_FABRIC_NETNS=s0.fabric_netns)  # same fabric name, other host
    dead, alive = admit(db, s0, "a"), admit(db, s1, "b")
    # Same slot and address on both hosts: leases are per node.
    slots = db.call(lambda x: sorted((r.node_id, r.slot, r.ip) for r in x.scalars(select(LeaseRow))))
    assert slots == [("h0", 0, "192.168.100.2"), ("h1", 0, "192.168.100.2")]

    assert nodes.sweep(db, 10) == {}  # both beat just now
    later = datetime.now(UTC) + timedelta(seconds=11)
    db.call(lambda x: x.get(NodeRow, "h1").__setattr__("heartbeat_at", later))
    assert nodes.sweep(db, 10, now=later) == {"h0": 1}
    assert nodes.sweep(db, 10, now=later) == {}  # idempotent

    row = db.call(lambda x: x.get(SessionRow, dead))
    assert row is not None and row.status == "failed" and row.hop == "node"
    assert row.reason is not None and "node h0 is down: no heartbeat since" in row.reason
    other = db.call(lambda x: x.get(SessionRow, alive))
    assert other is not None and other.status == "starting"
    events = db.call(lambda x: [e.name for e in x.scalars(select(EventRow).where(EventRow.session_id == dead))])
    assert events == ["starting", "failed"]
    views = {v.id: v for v in db.call(nodes.list_nodes)}
    assert views["h0"].state is NodeState.DOWN and views["h0"].reason == row.reason
    assert views["h1"].state is NodeState.UP

    assert nodes.heartbeat(db, reg("h0")) is NodeState.DOWN  # it comes back by itself
    assert db.call(nodes.list_nodes)[0].state is NodeState.UP


def test_drain_and_undrain(db: Database) -> None:
    nodes.heartbeat(db, reg("h0"))
    assert nodes.set_state(db, "h0", NodeState.DRAINING, "maintenance") is NodeState.DRAINING
    assert nodes.heartbeat(db, reg("h0")) is NodeState.DRAINING  # a beat does not undrain it
    assert db.call(nodes.list_nodes)[0].state is NodeState.DRAINING
    assert nodes.set_state(db, "h0", NodeState.UP) is NodeState.UP
    with pytest.raises(nodes.NodeUnknown, match="hearth node list"):
        nodes.set_state(db, "nope", NodeState.DRAINING)
    db.call(lambda x: x.get(NodeRow, "h0").__setattr__("state", "down"))
    with pytest.raises(HearthError, match="comes back up by itself"):
        nodes.set_state(db, "h0", NodeState.DRAINING)


@pytest.mark.netns
async def test_a_nodes_reconciler_never_touches_another_nodes_sessions(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """Before nodes, two controllers sharing one store ended each other's sessions within one reconcile pass."""
    s0 = make_settings(HEARTH_NODE_ID="h0", MAX_SESSIONS_PER_USER="5")
    s1 = make_settings(HEARTH_NODE_ID="h1", HEARTH_FABRIC_NETNS=s0.fabric_netns, MAX_SESSIONS_PER_USER="5")
    theirs = admit(db, s1, "b")  # h1 runs it; h0 has never heard of it
    mine = admit(db, s0, "a")  # h0's row, but h0 is not booting it (as after a crash)
    svc = session_service(s0, db, NetnsDriver(s0))
    report = await Reconciler(svc, svc.records, svc.boots).run_once()
    assert report.failed_sessions == [mine]
    assert theirs not in report.released_leases
    row = db.call(lambda x: x.get(SessionRow, theirs))
    assert row is not None and row.status == "starting"
    leases = db.call(lambda x: sorted((r.node_id, r.session_id) for r in x.scalars(select(LeaseRow))))
    assert leases == [("h1", theirs)]


def test_a_node_never_marks_itself_down(db: Database, make_settings: Callable[..., Settings]) -> None:
    """A beat stuck behind a busy store (SQLite locked in a boot storm) was written late; the node's own sweep right
    after must not declare it dead and end its sessions — another process notices a node that is really gone."""
    nodes.heartbeat(db, reg("h0"))
    sid = admit(db, make_settings(HEARTH_NODE_ID="h0"), "a")
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert nodes.sweep(db, 10, now=later, itself="h0") == {}
    row = db.call(lambda x: x.get(SessionRow, sid))
    assert row is not None and row.status == "starting"
    assert nodes.sweep(db, 10, now=later) == {"h0": 1}  # anyone else does
