"""IP address management: one lease per sandbox, in the state store.

Uniqueness of slot, address and owner is enforced by the database, so concurrent creates (threads or processes)
can never share an address: a losing insert violates a constraint and retries with the next free slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from sqlalchemy import ColumnElement, Select, case, delete, exists, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from hearth.config import Settings
from hearth.errors import PoolExhausted
from hearth.fabric.slot import Slot, slot_for
from hearth.store.coalesce import Coalesced
from hearth.store.db import Database
from hearth.store.models import LeaseRow, OwnerKind


@dataclass(frozen=True)
class Lease:
    session_id: str
    slot: Slot
    kind: OwnerKind = OwnerKind.SESSION  # who holds it (a session, a CLI sandbox, the pool, a quarantine)


class Ipam:
    def __init__(self, settings: Settings, db: Database) -> None:
        self._s = settings
        self._db = db
        self._releases = Coalesced(self._release)  # releases arriving together (a drain): one transaction

    def slot(self, index: int) -> Slot:
        s = self._s
        return slot_for(s.fabric_netns, s.internal_network, s.bridge_ip, s.ip_pool_start, index)

    @property
    def size(self) -> int:
        return self._s.pool_size

    def take(self, db: Session, owner: str, kind: OwnerKind = OwnerKind.SESSION) -> Lease:
        """Inside a transaction: the lease of `owner`, or a new one on the lowest free slot (PoolExhausted)."""
        fabric, node = self._s.fabric_netns, self._s.node_id
        mine = db.scalar(select(LeaseRow).where(LeaseRow.session_id == owner))
        if mine is not None:
            return Lease(owner, self.slot(mine.slot), mine.owner_kind)
        free = db.scalar(self.lowest_free(fabric, node))
        if free is None or free >= self.size:
            raise PoolExhausted(self.size)
        slot = self.slot(free)
        db.add(LeaseRow(node_id=node, fabric=fabric, slot=free, ip=str(slot.ip), session_id=owner, owner_kind=kind))
        db.flush()
        return Lease(owner, slot, kind)

    def acquire_sync(self, session_id: str, attempts: int = 64, kind: OwnerKind = OwnerKind.SESSION) -> Lease:
        """Lease the lowest free slot for `session_id` (idempotent: an existing lease is returned). Runs under the
        admission lock, like session creates; a constraint still guards against writers that do not take it."""
        for _ in range(attempts):
            try:
                return self._db.admit(lambda db: self.take(db, session_id, kind))
            except IntegrityError:
                continue  # another creator took that slot first; look again
        raise PoolExhausted(self.size)

    async def acquire(self, session_id: str, kind: OwnerKind = OwnerKind.SESSION) -> Lease:
        return await self._db.offload(lambda: self.acquire_sync(session_id, kind=kind))

    async def release(self, session_id: str) -> None:
        """Release the lease of `session_id`; releasing nothing is success. Releases arriving together (a drain's
        teardowns) are one transaction (hearth/store/coalesce.py); a StoreError reaches each of them."""
        await self._releases(session_id)

    async def _release(self, owners: list[str]) -> None:
        await self._db.run(lambda db: db.execute(delete(LeaseRow).where(LeaseRow.session_id.in_(owners))))

    @staticmethod
    def lowest_free(fabric: str, node: str) -> Select[int]:
        """One statement, whatever the number of leases: the lowest slot of this node's fabric not leased — 0, else
        the lowest `slot + 1` that is not leased (each probe an index lookup on uq_lease_slot). At or beyond the
        pool's size means the pool is full."""
        nxt = aliased(LeaseRow)
        taken = exists().where(nxt.node_id == node, nxt.fabric == fabric, nxt.slot == LeaseRow.slot + 1)
        gap = select(func.min(LeaseRow.slot + 1)).where(*Ipam.mine(fabric, node), ~taken).scalar_subquery()
        zero = exists().where(*Ipam.mine(fabric, node), LeaseRow.slot == 0)
        return select(case((zero, gap), else_=literal(0)))

    @staticmethod
    def mine(fabric: str, node: str) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
        """The WHERE clauses of this node's leases: a node only ever counts, takes or releases its own."""
        return LeaseRow.node_id == node, LeaseRow.fabric == fabric

    async def leases(self) -> list[Lease]:
        where = self.mine(self._s.fabric_netns, self._s.node_id)

        def q(db: Session) -> list[Lease]:
            rows = db.scalars(select(LeaseRow).where(*where).order_by(LeaseRow.slot))
            return [Lease(r.session_id, self.slot(r.slot), r.owner_kind) for r in rows]

        return await self._db.run(q)

    def index_of(self, ip: IPv4Address) -> int:
        return int(ip) - int(self._s.ip_pool_start)
