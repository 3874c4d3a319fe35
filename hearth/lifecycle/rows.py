"""The `sandboxes` table: its one writer. Every row a sandbox has — saved at boot, marked kept, deleted at its end,
taken from the warm pool (retired, or claimed by a session or a CLI sandbox) — is written here, with the agent secret
sealed under the vault's key ring and bound to the owner ("sandbox:<owner>", AAD_PURPOSE).

A claim is one transaction: `UPDATE sandboxes … WHERE owner_id=:pooled AND state='pooled'` must change one row — two
controllers (or two concurrent starts) never get the same sandbox. The same transaction gives the row and the lease to
the new owner (id and owner kind), stores its NEW agent secret (sealed) and, for a session, its slot and address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.errors import StoreError
from hearth.lifecycle.sandbox import Sandbox, SandboxState
from hearth.sandbox.procs import start_time
from hearth.store.coalesce import Coalesced
from hearth.store.db import Database
from hearth.store.models import LeaseRow, OwnerKind, SandboxRow, SessionRow
from hearth.vault.keys import KeyRing
from hearth.vault.seal import Sealed, seal, unseal

log = logging.getLogger("hearth.lifecycle")
AAD_PURPOSE = "agent-secret"  # the sealed secret is bound to ("sandbox:<owner>", this)


class SandboxRows:
    def __init__(self, settings: Settings, db: Database, ring: KeyRing) -> None:
        self.s = settings
        self.db = db
        self.ring = ring
        self._deletes = Coalesced(self._delete)  # deletes arriving together (a drain): one transaction

    async def _delete(self, owners: list[str]) -> None:
        # one statement: a concurrent end that deleted a row first is success, not a race
        await self.db.run(lambda db: db.execute(delete(SandboxRow).where(SandboxRow.owner_id.in_(owners))))

    def seal(self, owner: str, secret: str) -> Sealed:
        return seal(self.ring, secret.encode(), f"sandbox:{owner}", AAD_PURPOSE)

    def unseal(self, row: SandboxRow) -> str:
        """The agent secret of `row` (SealError, VaultKeyError or ValueError when it cannot be opened)."""
        sealed = Sealed(row.key_id, row.nonce, row.ciphertext)
        return unseal(self.ring, sealed, f"sandbox:{row.owner_id}", AAD_PURPOSE).decode()

    async def stored(self) -> list[SandboxRow]:
        """Every sandbox row of this node's fabric (what survived the last controller; never another node's)."""
        fabric, node = self.s.fabric_netns, self.s.node_id
        return await self.db.run(
            lambda db: list(
                db.scalars(select(SandboxRow).where(SandboxRow.node_id == node, SandboxRow.fabric == fabric))
            )
        )

    async def save(self, sb: Sandbox, driver: str) -> None:
        sealed = self.seal(sb.owner, sb.secret)
        started = await asyncio.to_thread(start_time, sb.pid) if sb.pid is not None else None
        fabric = self.s.fabric_netns

        def upsert(db: Db) -> None:
            row = db.get(SandboxRow, sb.owner)
            if row is None:
                row = SandboxRow(owner_id=sb.owner)
                db.add(row)
            row.kind, row.owner_kind, row.state = sb.kind.value, sb.owner_kind, sb.state.value
            row.fabric, row.slot, row.node_id = fabric, sb.slot, self.s.node_id
            row.driver, row.desktop, row.pid, row.pid_start = driver, sb.spec.desktop, sb.pid, started
            row.home = str(sb.spec.home) if sb.spec.home is not None else None
            row.key_id, row.nonce, row.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext

        await self.db.run(upsert)

    async def mark_kept_quietly(self, owner: str) -> None:
        def mark(db: Db) -> None:
            row = db.get(SandboxRow, owner)
            if row is not None:
                row.state = SandboxState.KEPT.value

        try:
            await self.db.run(mark)
        except StoreError:
            log.warning("kept sandbox not marked (store unavailable)", extra={"session_id": owner})

    async def delete_quietly(self, owner: str) -> None:
        """Delete `owner`'s row (gone already is success); with the deletes arriving together, in one transaction."""
        try:
            await self._deletes(owner)
        except StoreError:
            log.warning("sandbox row not deleted (store unavailable); the reconciler will", extra={"session_id": owner})

    async def retire(self, pooled: str) -> bool:
        """Take the pooled sandbox `pooled` out of the pool to end it: whether its row was still pooled (a claim
        by another start or controller wins otherwise)."""

        def take(db: Db) -> bool:
            res = db.execute(
                update(SandboxRow)
                .where(SandboxRow.owner_id == pooled, SandboxRow.state == SandboxState.POOLED.value)
                .values(state=SandboxState.RUNNING.value)
            )
            return bool(res.rowcount == 1)  # type: ignore[attr-defined]

        return await self.db.run(take)

    async def claim(self, candidates: Sequence[str], owner: str, kind: OwnerKind, sealed: Sealed) -> str | None:
        """Give the first of the pooled sandboxes `candidates` still pooled in the store to `owner` (of `kind`), its
        agent secret now `sealed`; returns the pooled owner id it had, or None when every one was taken."""
        return await self.db.run(lambda db: claim_in(db, candidates, owner, kind, sealed)) if candidates else None


def claim_in(db: Db, candidates: Sequence[str], owner: str, kind: OwnerKind, sealed: Sealed) -> str | None:
    """The claim's statements, inside the caller's transaction (`SandboxRows.claim`, or a session's admission that
    takes a pooled sandbox in the same transaction): the first of `candidates` still pooled becomes `owner`'s, with
    its lease (the owner's own lease, if it holds one, is given up) and, for a session row, its slot and address."""
    for pooled in candidates:
        res = db.execute(
            update(SandboxRow)
            .where(SandboxRow.owner_id == pooled, SandboxRow.state == SandboxState.POOLED.value)
            .values(
                owner_id=owner,
                owner_kind=kind,
                state=SandboxState.RUNNING.value,
                key_id=sealed.key_id,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
            )
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another controller took it first
        db.execute(delete(LeaseRow).where(LeaseRow.session_id == owner))
        db.flush()
        db.execute(update(LeaseRow).where(LeaseRow.session_id == pooled).values(session_id=owner, owner_kind=kind))
        lease = db.scalar(select(LeaseRow).where(LeaseRow.session_id == owner))
        session = db.get(SessionRow, owner)
        if session is not None and lease is not None:
            session.slot, session.sandbox_ip = lease.slot, lease.ip
        return pooled
    return None
