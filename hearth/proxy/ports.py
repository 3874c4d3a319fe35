"""Each user's port on the upstream egress proxy: assigned once, atomically, in the store, and kept for life.

The one writer of `egress_ports`. A first request picks a free port — probing from a point derived from the user id,
so concurrent first requests for different users rarely aim at the same port — and inserts it; the database's
uniqueness (user and port) decides every race, on one node or many sharing the store: the loser reads the winner's
row (same user) or probes on (same port). A range with no free port left is a clear error naming the fix.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as Db

from hearth.config.proxy import port_at, port_count
from hearth.errors import HearthError, Hop
from hearth.store.db import Database
from hearth.store.models import EgressPortRow

log = logging.getLogger("hearth.proxy")
MAX_RACES = 64  # inserts lost to a concurrent one before giving up (each loss means another user got a port)


class PortsExhausted(HearthError):
    def __init__(self, total: int) -> None:
        super().__init__(
            Hop.PROXY,
            f"every port of HEARTH_EGRESS_PROXY_PORTS is assigned ({total} users have one)",
            "widen HEARTH_EGRESS_PROXY_PORTS (ports stay with their users for life) and ask for more proxy ports",
        )


@dataclass(frozen=True)
class Assigned:
    user_id: str
    port: int
    new: bool  # this call assigned it


def _start(user_id: str, total: int) -> int:
    return int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big") % total


def _pick(db: Db, user_id: str, ranges: tuple[range, ...], node_id: str) -> Assigned:
    row = db.get(EgressPortRow, user_id)
    if row is not None:
        return Assigned(user_id, row.port, False)
    total = port_count(ranges)
    used = set(db.scalars(select(EgressPortRow.port)))
    free = total - sum(1 for r in ranges for p in used if p in r)
    if free <= 0:
        raise PortsExhausted(total)
    start = _start(user_id, total)
    for step in range(total):
        port = port_at(ranges, (start + step) % total)
        if port not in used:
            db.add(EgressPortRow(user_id=user_id, port=port, node_id=node_id))
            db.flush()  # the unique constraints decide a race here (IntegrityError: the caller tries again)
            return Assigned(user_id, port, True)
    raise PortsExhausted(total)


def assign_sync(db: Database, user_id: str, ranges: tuple[range, ...], node_id: str = "local") -> Assigned:
    """The user's port (assigned now when it has none); raises PortsExhausted, or StoreError while the store is down."""
    for _ in range(MAX_RACES):
        try:
            got = db.call(lambda s: _pick(s, user_id, ranges, node_id))
        except IntegrityError:
            continue  # another request took this user's row or this port first: look again
        if got.new:
            log.info("egress proxy port assigned", extra={"user": user_id, "port": got.port})
        return got
    raise HearthError(
        Hop.STORE,
        f"could not assign an egress proxy port after {MAX_RACES} concurrent attempts",
        "retry; if it persists, look for a store that refuses writes",
    )


async def assign(db: Database, user_id: str, ranges: tuple[range, ...], node_id: str = "local") -> Assigned:
    return await db.offload(lambda: assign_sync(db, user_id, ranges, node_id))


async def lookup(db: Database, user_id: str) -> int | None:
    """The user's port, None when none was assigned yet (never assigns)."""
    row = await db.run(lambda s: s.get(EgressPortRow, user_id))
    return row.port if row is not None else None


def count(db: Db) -> int:
    return int(db.scalar(select(func.count()).select_from(EgressPortRow)) or 0)
