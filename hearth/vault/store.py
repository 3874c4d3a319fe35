"""The vault: sealed credential bundles in the state store. A bundle is `{path: {"mode": int, "data": b64}}`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session as Db

from hearth.store.db import Database
from hearth.store.models import CredentialRow, utcnow
from hearth.vault.keys import KeyRing, MasterKey, VaultKeyError
from hearth.vault.seal import Sealed, seal, unseal
from hearth.webhooks.outbox import CredentialEvent, Outbox


@dataclass(frozen=True)
class CredentialFile:
    path: str  # target path in the CLI sandbox, relative to its home
    mode: int
    data: bytes

    def __repr__(self) -> str:  # never show contents
        return f"CredentialFile(path={self.path!r}, mode={oct(self.mode)}, data=<{len(self.data)} bytes>)"


@dataclass(frozen=True)
class CredentialMeta:
    user_id: str
    provider: str
    key_id: str
    files: list[str]
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


def _encode(files: list[CredentialFile]) -> bytes:
    return json.dumps(
        {f.path: {"mode": f.mode, "data": base64.b64encode(f.data).decode()} for f in files}, sort_keys=True
    ).encode()


def _decode(raw: bytes) -> list[CredentialFile]:
    return [CredentialFile(p, int(v["mode"]), base64.b64decode(v["data"])) for p, v in json.loads(raw).items()]


def _meta(r: CredentialRow) -> CredentialMeta:
    return CredentialMeta(r.user_id, r.provider, r.key_id, list(r.files), r.created_at, r.updated_at, r.delivered_at)


class Vault:
    def __init__(self, db: Database, ring: KeyRing, outbox: Outbox | None = None) -> None:
        self.db = db
        self.ring = ring
        self.outbox = outbox  # webhooks: sealed, delivered and revoked, each in its own change's transaction

    async def put(
        self, user_id: str, provider: str, files: list[CredentialFile], session_id: str | None
    ) -> CredentialMeta:
        return await self.db.run(self.upsert(user_id, provider, files, session_id))

    def upsert(
        self, user_id: str, provider: str, files: list[CredentialFile], session_id: str | None
    ) -> Callable[[Db], CredentialMeta]:
        """Seal now; the returned function stores (replacing the previous record) inside the caller's transaction,
        so the replacement is committed only with whatever else that transaction does."""
        sealed = seal(self.ring, _encode(files), user_id, provider)

        def upsert(db: Db) -> CredentialMeta:
            row = db.scalar(
                select(CredentialRow).where(CredentialRow.user_id == user_id, CredentialRow.provider == provider)
            )
            if row is None:
                row = CredentialRow(user_id=user_id, provider=provider)
                db.add(row)
            row.key_id, row.nonce, row.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext
            row.files = sorted(f.path for f in files)
            row.session_id = session_id
            row.updated_at = utcnow()
            row.delivered_at = None
            db.flush()
            if self.outbox is not None:
                self.outbox.credential(db, CredentialEvent.SEALED, user_id, provider, row.files, session_id)
            return _meta(row)

        return upsert

    async def open(self, user_id: str, provider: str) -> list[CredentialFile] | None:
        row = await self.db.run(
            lambda db: db.scalar(
                select(CredentialRow).where(CredentialRow.user_id == user_id, CredentialRow.provider == provider)
            )
        )
        if row is None:
            return None
        return _decode(unseal(self.ring, Sealed(row.key_id, row.nonce, row.ciphertext), user_id, provider))

    async def mark_delivered(self, user_id: str, provider: str) -> None:
        def mark(db: Db) -> None:
            row = db.scalar(
                select(CredentialRow).where(CredentialRow.user_id == user_id, CredentialRow.provider == provider)
            )
            if row is not None:
                row.delivered_at = utcnow()
                if self.outbox is not None:
                    self.outbox.credential(
                        db, CredentialEvent.DELIVERED, user_id, provider, list(row.files), row.session_id
                    )

        await self.db.run(mark)

    async def list(self, user_id: str) -> list[CredentialMeta]:
        return await self.db.run(
            lambda db: [
                _meta(r)
                for r in db.scalars(
                    select(CredentialRow).where(CredentialRow.user_id == user_id).order_by(CredentialRow.provider)
                )
            ]
        )

    async def revoke(self, user_id: str, provider: str) -> bool:
        def drop(db: Db) -> bool:
            row = db.scalar(
                select(CredentialRow).where(CredentialRow.user_id == user_id, CredentialRow.provider == provider)
            )
            if row is None:
                return False
            if self.outbox is not None:
                self.outbox.credential(db, CredentialEvent.REVOKED, user_id, provider, list(row.files), row.session_id)
            db.execute(delete(CredentialRow).where(CredentialRow.id == row.id))
            return True

        return await self.db.run(drop)

    def rotate_sync(self, new_key: MasterKey | None = None) -> tuple[KeyRing, int]:
        """Re-seal every record under a new key; returns the new ring (old keys dropped) and the count.

        Crash-safe order: the ring holding old *and* new keys is saved first, then records are re-sealed in one
        transaction, then the old keys are dropped. With `HEARTH_MASTER_KEY` (no key file) the new key must be
        given, and the operator then sets it as HEARTH_MASTER_KEY.
        """
        if self.ring.path is None and new_key is None:
            raise VaultKeyError(
                "HEARTH_MASTER_KEY is set: pass the new key (--new-key) and then set HEARTH_MASTER_KEY to it"
            )
        new = KeyRing([new_key], self.ring.path) if new_key else self.ring.rotated()
        both = KeyRing([new.current, *(self.ring.get(i) for i in self.ring.ids())], self.ring.path)
        both.save()

        def reseal(db: Db) -> int:
            n = 0
            for row in db.scalars(select(CredentialRow)):
                plain = unseal(both, Sealed(row.key_id, row.nonce, row.ciphertext), row.user_id, row.provider)
                s = seal(both, plain, row.user_id, row.provider)
                row.key_id, row.nonce, row.ciphertext = s.key_id, s.nonce, s.ciphertext
                n += 1
            return n

        count = self.db.call(reseal)
        final = both.without(set(self.ring.ids()) - {both.current.key_id})
        final.save()
        self.ring = final
        return final, count
