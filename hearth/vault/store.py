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
    version: int = 1  # +1 per re-seal: a sign-in, or a CLI's refresh pushed back (issue 23)
    refreshed_at: datetime | None = None
    status: str = "active"  # active | needs_signin
    status_reason: str | None = None  # the CLI's own words (expired, revoked)
    last_used_at: datetime | None = None


def _encode(files: list[CredentialFile]) -> bytes:
    return json.dumps(
        {f.path: {"mode": f.mode, "data": base64.b64encode(f.data).decode()} for f in files}, sort_keys=True
    ).encode()


def _decode(raw: bytes) -> list[CredentialFile]:
    return [CredentialFile(p, int(v["mode"]), base64.b64decode(v["data"])) for p, v in json.loads(raw).items()]


def _meta(r: CredentialRow) -> CredentialMeta:
    return CredentialMeta(
        r.user_id, r.provider, r.key_id, list(r.files), r.created_at, r.updated_at, r.delivered_at,
        r.version or 1, r.refreshed_at, r.status or "active", r.status_reason, r.last_used_at,
    )  # fmt: skip


def _row(db: Db, user_id: str, provider: str) -> CredentialRow | None:
    return db.scalar(select(CredentialRow).where(CredentialRow.user_id == user_id, CredentialRow.provider == provider))


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
                row = CredentialRow(user_id=user_id, provider=provider, version=0)
                db.add(row)
            row.version = (row.version or 0) + 1  # a new sign-in: the newest, active again
            row.status, row.status_reason = "active", None
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

    async def open_versioned(self, user_id: str, provider: str) -> tuple[list[CredentialFile], CredentialMeta] | None:
        """The newest files with their metadata (version, status) read in one go."""
        row = await self.db.run(lambda db: _row(db, user_id, provider))
        if row is None:
            return None
        return _decode(unseal(self.ring, Sealed(row.key_id, row.nonce, row.ciphertext), user_id, provider)), _meta(row)

    async def refreshed(
        self, user_id: str, provider: str, files: list[CredentialFile], base_version: int
    ) -> CredentialMeta | None:
        """A CLI rewrote its credential files (a refresh, a rotated refresh token) while it held `base_version`:
        re-sealed as version + 1 with `refreshed_at`. None when a newer version was sealed meanwhile (a sign-in
        completed during the prompt): the newest wins, these files are older by lineage and dropped."""
        sealed = seal(self.ring, _encode(files), user_id, provider)

        def store(db: Db) -> CredentialMeta | None:
            row = _row(db, user_id, provider)
            if row is None or (row.version or 1) != base_version:
                return None
            row.key_id, row.nonce, row.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext
            row.files = sorted(f.path for f in files)
            row.version = (row.version or 1) + 1
            row.refreshed_at = row.updated_at = row.delivered_at = utcnow()  # they are in the CLI sandbox already
            row.status, row.status_reason = "active", None
            db.flush()
            if self.outbox is not None:
                self.outbox.credential(db, CredentialEvent.SEALED, user_id, provider, row.files, row.session_id)
            return _meta(row)

        return await self.db.run(store)

    async def set_status(self, user_id: str, provider: str, version: int, status: str, reason: str | None) -> None:
        """`needs_signin` (with the CLI's reason) or `active`, for the version the CLI used (a newer sign-in keeps
        its own status); `last_used_at` is now."""

        def mark(db: Db) -> None:
            row = _row(db, user_id, provider)
            if row is None:
                return
            row.last_used_at = utcnow()
            if (row.version or 1) == version:
                row.status, row.status_reason = status, reason

        await self.db.run(mark)

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
