"""The nodes of a cluster, in the shared store: a node registers and heartbeats itself; anyone (every node and every
edge runs `sweep`) marks a silent node down and ends its sessions with a reason naming it; an operator drains one.

Concurrency is the database's: `sweep` takes the silent nodes with `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite has
one writer anyway), so two sweepers never both end one node's sessions, and a node's heartbeat racing its own death
is ordered by the row lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session as Db

from hearth.cluster.watch import Watch
from hearth.errors import HearthError, Hop
from hearth.session.states import TERMINAL, Status
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, NodeRow, SessionRow
from hearth.store.nodestates import NodeState, allowed
from hearth.webhooks.outbox import Outbox

log = logging.getLogger("hearth.cluster")
ACTIVE = SessionRow.status.not_in([t.value for t in TERMINAL])


@dataclass(frozen=True)
class NodeView:
    id: str
    address: str
    state: NodeState
    capacity: int
    free_slots: int
    active: int  # active sessions in the store (what placement counts; free_slots is the node's own view)
    drivers: tuple[str, ...]
    version: str
    reason: str | None
    heartbeat_at: datetime

    @property
    def room(self) -> int:
        return max(0, min(self.capacity - self.active, self.free_slots))


@dataclass(frozen=True)
class Registration:
    id: str
    address: str
    capacity: int  # sessions this node takes (HEARTH_MAX_SESSIONS_PER_NODE, else its pool)
    pool: int  # its fabric's addresses; free slots = pool - its leases, counted at each beat
    drivers: tuple[str, ...]
    version: str


class NodeUnknown(HearthError):
    def __init__(self, node_id: str) -> None:
        super().__init__(Hop.NODE, f"no node {node_id!r} is registered", "`hearth node list` shows the ids")


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def down_reason(node_id: str, last: datetime) -> str:
    return f"[node] node {node_id} is down: no heartbeat since {_aware(last).isoformat(timespec='seconds')}"


def heartbeat(db: Database, reg: Registration) -> NodeState | None:
    """Register (first beat) or refresh this node. A node that was marked down comes back `up`; a draining node
    stays draining. Returns the node's state BEFORE the beat (None: first registration)."""

    def beat(s: Db) -> NodeState | None:
        row = s.scalar(select(NodeRow).where(NodeRow.id == reg.id).with_for_update())
        now = datetime.now(UTC)
        used = s.scalar(select(func.count()).select_from(LeaseRow).where(LeaseRow.node_id == reg.id)) or 0
        before = None if row is None else NodeState(row.state)
        if row is None:
            row = NodeRow(id=reg.id, state=NodeState.UP.value, started_at=now)
            s.add(row)
        elif row.state == NodeState.DOWN.value:
            row.state, row.reason, row.started_at = NodeState.UP.value, None, now
            log.warning("node back after being marked down", extra={"node_id": reg.id})
        row.address, row.capacity, row.free_slots = reg.address, reg.capacity, max(0, reg.pool - int(used))
        row.drivers, row.version, row.heartbeat_at = list(reg.drivers), reg.version, now
        return before

    return db.call(beat)


def state_of(s: Db, node_id: str) -> NodeState | None:
    state = s.scalar(select(NodeRow.state).where(NodeRow.id == node_id))
    return None if state is None else NodeState(state)


def set_state(db: Database, node_id: str, target: NodeState, reason: str | None = None) -> NodeState:
    """`hearth node drain|undrain`: move a node's state (an illegal move leaves it as it is and says so)."""

    def move(s: Db) -> NodeState:
        row = s.scalar(select(NodeRow).where(NodeRow.id == node_id).with_for_update())
        if row is None:
            raise NodeUnknown(node_id)
        current = NodeState(row.state)
        if not allowed(current, target):
            raise HearthError(
                Hop.NODE,
                f"node {node_id} is {current.value}; it cannot become {target.value}",
                "a down node comes back up by itself when its `hearth node` heartbeats again",
            )
        row.state, row.reason = target.value, reason
        return target

    return db.call(move)


def sweep(
    db: Database,
    dead_after: float,
    now: datetime | None = None,
    itself: str | None = None,
    outbox: Outbox | None = None,
    watch: Watch | None = None,
) -> dict[str, int]:
    """Mark every node silent for more than `dead_after` seconds down and fail its active sessions with a reason
    naming it — never `itself` (the node sweeping is alive, however late its own beat was written: a beat stuck
    behind a busy store must not end its own sessions). Returns {node id: sessions ended}. Idempotent; safe to run
    from every process at once.

    With a `watch` (the sweeper loops: hearth/cluster/beat.py) silence is what this sweeper itself saw over sweeps
    that reached the store (hearth/cluster/watch.py), not the age of `heartbeat_at`: a store outage is nobody's
    death. Without one (an operator's one-off sweep, tests) the wall clock decides."""

    def work(s: Db) -> dict[str, int]:
        alive = NodeRow.state != NodeState.DOWN.value, NodeRow.id != (itself or "")
        if watch is None:
            cutoff = (now or datetime.now(UTC)) - timedelta(seconds=dead_after)
            silent = s.scalars(
                select(NodeRow).where(*alive, NodeRow.heartbeat_at < cutoff).with_for_update(skip_locked=True)
            ).all()
        else:
            beats = {str(i): _aware(b) for i, b in s.execute(select(NodeRow.id, NodeRow.heartbeat_at).where(*alive))}
            stale = watch.stale(beats)
            locked = (
                s.scalars(
                    select(NodeRow).where(*alive, NodeRow.id.in_(sorted(stale))).with_for_update(skip_locked=True)
                ).all()
                if stale
                else []
            )
            silent = [n for n in locked if _aware(n.heartbeat_at) == beats.get(n.id)]  # not beaten since it was read
        ended: dict[str, int] = {}
        for node in silent:
            reason = down_reason(node.id, node.heartbeat_at)
            node.state, node.reason = NodeState.DOWN.value, reason
            ids = list(s.scalars(select(SessionRow.id).where(SessionRow.node_id == node.id, ACTIVE)))
            if ids:
                if outbox is not None:  # webhooks: `session.failed` for each, read before the update below
                    outbox.sessions_failing(s, ids, reason, Hop.NODE.value)
                s.execute(
                    update(SessionRow)
                    .where(SessionRow.id.in_(ids), ACTIVE)
                    .values(status=Status.FAILED.value, reason=reason, hop=Hop.NODE.value)
                )
                s.add_all(EventRow(session_id=i, kind="state", name=Status.FAILED.value, detail=reason) for i in ids)
            ended[node.id] = len(ids)
            log.warning("node marked down", extra={"node_id": node.id, "sessions_ended": len(ids)})
        return ended

    return db.call(work)


def list_nodes(s: Db) -> list[NodeView]:
    """Every registered node with its active session count (inside a transaction of the caller's)."""
    rows = s.execute(select(SessionRow.node_id, func.count()).where(ACTIVE).group_by(SessionRow.node_id))
    counts = {str(node): int(n) for node, n in rows}
    return [
        NodeView(
            r.id,
            r.address,
            NodeState(r.state),
            r.capacity,
            r.free_slots,
            int(counts.get(r.id, 0)),
            tuple(r.drivers),
            r.version,
            r.reason,
            _aware(r.heartbeat_at),
        )
        for r in s.scalars(select(NodeRow).order_by(NodeRow.id))
    ]


def node_of_session(s: Db, session_id: str) -> tuple[str, NodeView | None] | None:
    """(node id, its row if registered) of a session, or None for an unknown session."""
    node_id = s.scalar(select(SessionRow.node_id).where(SessionRow.id == session_id))
    if node_id is None:
        return None
    return node_id, next((n for n in list_nodes(s) if n.id == node_id), None)


def peers(s: Db, itself: str) -> tuple[str, ...]:
    """The addresses of the other nodes not marked down (whom a cut-off node asks: hearth/cluster/fence.py)."""
    rows = s.scalars(
        select(NodeRow.address).where(NodeRow.state != NodeState.DOWN.value, NodeRow.id != itself).order_by(NodeRow.id)
    )
    return tuple(str(a) for a in rows)
