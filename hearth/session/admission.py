"""Admission of a new session: limits, lease and insert in ONE transaction under the admission lock.

`Database.admit` first updates the `admission` lock row — a row lock on PostgreSQL, SQLite's write lock — so
concurrent starts (threads, workers or controllers sharing the store) are admitted one after another and the counts
read here stay true until the insert commits: exactly the limit gets through, never more.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.errors import PoolExhausted
from hearth.fabric.ipam import Ipam, Lease
from hearth.lifecycle.rows import claim_in
from hearth.session.states import TERMINAL, Status
from hearth.store.db import Database
from hearth.store.models import EventRow, NodeRow, OwnerKind, SessionRow
from hearth.store.nodestates import NodeState
from hearth.vault.seal import Sealed
from hearth.webhooks.outbox import Outbox

ATTEMPTS = 16  # a writer outside the admission lock (the reconciler's quarantine) may take a slot first


class Limit(StrEnum):
    """Which limit refused a new session (the API answers each with its own status: hearth/api/problems.py)."""

    USER = "user"  # the user's own cap (MAX_SESSIONS_PER_USER): cancel one first
    FULL = "full"  # the cluster's or this node's cap: retry later or on another node
    CLOSED = "closed"  # this controller takes no new sessions (shutting down, fenced): retry on another one


class LimitExceeded(Exception):
    def __init__(self, kind: Limit, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_limits(db: Db, s: Settings, user_id: str) -> None:
    """Inside the admission transaction: global (MAX_BROWSER_SESSIONS, when set), per-node (this fabric) and
    per-user limits."""
    active = SessionRow.status.not_in([t.value for t in TERMINAL])

    def count(*where: object) -> int:
        return int(db.scalar(select(func.count()).select_from(SessionRow).where(active, *where)) or 0)  # type: ignore[arg-type]

    if s.max_browser_sessions and (n := count()) >= s.max_browser_sessions:  # the global cap: off unless set
        alive = NodeRow.state != NodeState.DOWN.value
        m = max(1, int(db.scalar(select(func.count()).select_from(NodeRow).where(alive)) or 0))
        raise LimitExceeded(
            Limit.FULL,
            f"cluster full: {n} sessions on {m} node{'s' if m != 1 else ''} (MAX_BROWSER_SESSIONS); retry later",
        )
    # Without HEARTH_MAX_SESSIONS_PER_NODE the IP pool bounds this node (PoolExhausted from the lease).
    if s.max_sessions_per_node and count(SessionRow.node_id == s.node_id) >= s.max_sessions_per_node:
        raise LimitExceeded(
            Limit.FULL,
            f"node {s.node_id} (fabric {s.fabric_netns}) runs its limit of {s.max_sessions_per_node} sessions "
            "(HEARTH_MAX_SESSIONS_PER_NODE); retry later or on another node",
        )
    mine = count(SessionRow.user_id == user_id)
    if mine >= s.max_sessions_per_user:
        raise LimitExceeded(
            Limit.USER, f"user {user_id} already has {mine} active sessions (MAX_SESSIONS_PER_USER); cancel one first"
        )


def admit(
    db: Database,
    ipam: Ipam,
    s: Settings,
    sid: str,
    user_id: str,
    provider: str | None,
    mode: str,
    driver: str,
    status: Status = Status.STARTING,
    return_url: str | None = None,
) -> tuple[SessionRow, Lease]:
    """Check the limits, lease an address and insert the `starting` session, atomically (blocking: run it on the
    store's executor). LimitExceeded / PoolExhausted leave nothing behind."""

    def step(session: Db) -> tuple[SessionRow, Lease]:
        check_limits(session, s, user_id)
        lease = ipam.take(session, sid)
        row = _insert(session, s, sid, user_id, provider, mode, driver, status, return_url, lease)
        return row, lease

    for _ in range(ATTEMPTS):
        try:
            return db.admit(step)
        except IntegrityError:
            continue
    raise PoolExhausted(ipam.size)


class _Missed(Exception):
    """Every pooled candidate was taken meanwhile: the pooled admission's transaction is rolled back."""


def admit_pooled(
    db: Database,
    s: Settings,
    sid: str,
    user_id: str,
    provider: str | None,
    mode: str,
    driver: str,
    candidates: Sequence[str],
    sealed: Sealed,
    return_url: str | None = None,
) -> tuple[SessionRow, str] | None:
    """`admit` for a start the warm pool can serve: limits, insert (`starting`: a hand-over waits in no boot queue)
    and the claim of the first of the pooled sandboxes `candidates` still pooled — its row and lease become the
    session's, its agent secret `sealed` (hearth/lifecycle/rows.py `claim_in`) — in ONE transaction, instead of a
    lease taken here and the claim in a second one. Returns the row and the pooled owner id it had; None (nothing
    written) when every candidate was taken meanwhile: the caller admits it as a miss. Blocking, as `admit`."""

    def step(session: Db) -> tuple[SessionRow, str]:
        check_limits(session, s, user_id)
        row = _insert(session, s, sid, user_id, provider, mode, driver, Status.STARTING, return_url, None)
        pooled = claim_in(session, candidates, sid, OwnerKind.SESSION, sealed)  # also sets the row's slot and address
        if pooled is None:
            raise _Missed
        return row, pooled

    try:
        return db.admit(step)
    except _Missed:
        return None


def _insert(
    session: Db,
    s: Settings,
    sid: str,
    user_id: str,
    provider: str | None,
    mode: str,
    driver: str,
    status: Status,
    return_url: str | None,
    lease: Lease | None,
) -> SessionRow:
    """The new session's row, its first state event and its webhook, inside the admission's transaction."""
    row = SessionRow(
        id=sid,
        user_id=user_id,
        provider=provider,
        mode=mode,
        status=status.value,
        driver=driver,
        node_id=s.node_id,
        fabric=s.fabric_netns,
        slot=lease.slot.index if lease is not None else None,
        sandbox_ip=str(lease.slot.ip) if lease is not None else None,
        timings={},
        return_url=return_url,
    )
    session.add(row)
    session.flush()
    session.add(EventRow(session_id=sid, kind="state", name=status.value))
    Outbox(s).session(session, row, status.value, None)  # webhooks: `session.starting` (or `.queued`)
    return row
