"""The prompts' store queries: atomic admission (limits), transitions, sealed chunks of stream events, history,
deletion and retention. Prompt texts, events and answers are sealed with the vault's key ring, bound to the user
and the prompt id (a row copied to another user or prompt does not open)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.prompts.states import ACTIVE, PromptStatus, allowed
from hearth.store.db import Database
from hearth.store.models import PromptChunkRow, PromptRow, utcnow
from hearth.vault.keys import KeyRing
from hearth.vault.seal import Sealed, seal, unseal


class Refused(Exception):
    """An admission refused: `status` is the HTTP status (429 per user, 503 queue full)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


def aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Chunk:
    id: int
    kind: str
    first_seq: int
    last_seq: int
    items: list[Any]


class PromptStore:
    def __init__(self, settings: Settings, db: Database, ring: KeyRing) -> None:
        self.s, self.db, self.ring = settings, db, ring

    # ---- sealing ------------------------------------------------------------------------------
    def _seal(self, row_user: str, pid: str, data: bytes) -> Sealed:
        return seal(self.ring, data, row_user, f"prompt:{pid}")

    def _open(self, row_user: str, pid: str, key_id: str, nonce: bytes, ct: bytes) -> bytes:
        return unseal(self.ring, Sealed(key_id, nonce, ct), row_user, f"prompt:{pid}")

    def prompt_text(self, row: PromptRow) -> str | None:
        if row.key_id is None or row.prompt_nonce is None or row.prompt_ct is None:
            return None
        return self._open(row.user_id, row.id, row.key_id, row.prompt_nonce, row.prompt_ct).decode()

    def answer_text(self, row: PromptRow) -> str | None:
        if row.key_id is None or row.answer_nonce is None or row.answer_ct is None:
            return None
        return self._open(row.user_id, row.id, row.key_id, row.answer_nonce, row.answer_ct).decode()

    # ---- admission ----------------------------------------------------------------------------
    async def admit(self, pid: str, user_id: str, provider: str, prompt: str, **fields: Any) -> PromptRow:
        """Count and insert under the admission lock: concurrent posts get exactly the limits, never more."""
        sealed = self._seal(user_id, pid, prompt.encode())
        active = [s.value for s in ACTIVE]
        s = self.s

        def step(db: Db) -> PromptRow:
            everyone = int(
                db.scalar(select(func.count()).select_from(PromptRow).where(PromptRow.status.in_(active))) or 0
            )
            if everyone >= s.prompt_queue:
                raise Refused(
                    503, f"the prompt queue is full ({everyone} queued or running, HEARTH_PROMPT_QUEUE); retry later"
                )
            mine = int(
                db.scalar(
                    select(func.count())
                    .select_from(PromptRow)
                    .where(PromptRow.user_id == user_id, PromptRow.status.in_(active))
                )
                or 0
            )
            if mine >= s.max_prompts_per_user:
                raise Refused(
                    429,
                    f"user {user_id} already has {mine} prompts queued or running (HEARTH_MAX_PROMPTS_PER_USER); "
                    "wait for one to finish or cancel one",
                )
            row = PromptRow(
                id=pid,
                user_id=user_id,
                provider=provider,
                node_id=s.node_id,
                status=PromptStatus.QUEUED.value,
                usage={},
                timings={"queued": _iso(utcnow())},
                truncated=False,
                last_seq=0,
                answer_bytes=0,
                key_id=sealed.key_id,
                prompt_nonce=sealed.nonce,
                prompt_ct=sealed.ciphertext,
                **fields,
            )
            db.add(row)
            db.flush()
            return row

        return await self.db.offload(lambda: self.db.admit(step))

    # ---- reads --------------------------------------------------------------------------------
    async def get(self, pid: str) -> PromptRow | None:
        return await self.db.run(lambda db: db.get(PromptRow, pid))

    async def conversation_known(self, user_id: str, provider: str, conversation_id: str) -> bool:
        def find(db: Db) -> bool:
            q = select(PromptRow.id).where(
                PromptRow.user_id == user_id,
                PromptRow.provider == provider,
                PromptRow.conversation_id == conversation_id,
                PromptRow.status == PromptStatus.COMPLETED.value,
            )
            return db.scalar(q.limit(1)) is not None

        return await self.db.run(find)

    async def history(self, user_id: str, limit: int, offset: int) -> tuple[list[PromptRow], int]:
        def page(db: Db) -> tuple[list[PromptRow], int]:
            total = int(db.scalar(select(func.count()).select_from(PromptRow).where(PromptRow.user_id == user_id)) or 0)
            rows = db.scalars(
                select(PromptRow)
                .where(PromptRow.user_id == user_id)
                .order_by(PromptRow.created_at.desc(), PromptRow.id)
                .limit(limit)
                .offset(offset)
            )
            return list(rows), total

        return await self.db.run(page)

    async def active_on_node(self) -> list[PromptRow]:
        active = [s.value for s in ACTIVE]
        node = self.s.node_id
        return await self.db.run(
            lambda db: list(
                db.scalars(select(PromptRow).where(PromptRow.node_id == node, PromptRow.status.in_(active)))
            )
        )

    async def chunks(self, row: PromptRow, after: int, raw_after: int | None) -> list[Chunk]:
        """Stored chunks in order: events newer than sequence number `after`, and raw lines in chunks with ids
        above `raw_after` (None: no raw lines)."""
        pick = (PromptChunkRow.kind == "events") & (PromptChunkRow.last_seq > after)
        if raw_after is not None:
            pick = pick | ((PromptChunkRow.kind == "raw") & (PromptChunkRow.id > raw_after))

        def load(db: Db) -> list[PromptChunkRow]:
            q = select(PromptChunkRow).where(PromptChunkRow.prompt_id == row.id, pick).order_by(PromptChunkRow.id)
            return list(db.scalars(q))

        out = []
        for c in await self.db.run(load):
            items = json.loads(self._open(row.user_id, row.id, c.key_id, c.nonce, c.ciphertext))
            out.append(Chunk(c.id, c.kind, c.first_seq, c.last_seq, items))
        return out

    # ---- writes -------------------------------------------------------------------------------
    async def transition(
        self, pid: str, to: PromptStatus, answer: tuple[str, str] | None = None, **fields: Any
    ) -> PromptRow | None:
        """Move to `to` when the table allows it (None otherwise: e.g. already ended), with `fields` set and, with
        `answer` (user id, text), the answer sealed in the same transaction: an ended prompt always has its answer."""
        timing = fields.pop("timing", None)
        sealed = self._seal(answer[0], pid, answer[1].encode()) if answer else None

        def move(db: Db) -> PromptRow | None:
            row = db.get(PromptRow, pid)
            if row is None or not allowed(PromptStatus(row.status), to):
                return None
            row.status = to.value
            for k, v in fields.items():
                setattr(row, k, v)
            t = dict(row.timings or {})
            if timing:
                t[timing] = _iso(utcnow())
            if to.terminal:
                row.ended_at = utcnow()
                t["done"] = _iso(row.ended_at)
                row.prompt_nonce = row.prompt_ct = None  # the prompt is not kept after its run
            row.timings = t
            if sealed is not None and row.user_id == (answer or ("", ""))[0]:
                row.key_id, row.answer_nonce, row.answer_ct = sealed.key_id, sealed.nonce, sealed.ciphertext
            return row

        return await self.db.run(move)

    async def append(self, row: PromptRow, events: list[dict[str, Any]], raw: list[str], **fields: Any) -> PromptRow:
        """Store a batch (sealed) and update the row's metadata in one transaction."""
        sealed_events = None
        if events:
            sealed_events = self._seal(row.user_id, row.id, json.dumps(events).encode())
        sealed_raw = self._seal(row.user_id, row.id, json.dumps(raw).encode()) if raw else None
        timing = fields.pop("timing", None)

        def write(db: Db) -> PromptRow:
            r = db.get(PromptRow, row.id)
            assert r is not None
            first, last = (events[0]["seq"], events[-1]["seq"]) if events else (r.last_seq, r.last_seq)
            if sealed_events is not None:
                db.add(
                    PromptChunkRow(
                        prompt_id=r.id, kind="events", first_seq=first, last_seq=last, key_id=sealed_events.key_id,
                        nonce=sealed_events.nonce, ciphertext=sealed_events.ciphertext,
                    )
                )  # fmt: skip
            if sealed_raw is not None:
                db.add(
                    PromptChunkRow(
                        prompt_id=r.id, kind="raw", first_seq=last, last_seq=last + 1, key_id=sealed_raw.key_id,
                        nonce=sealed_raw.nonce, ciphertext=sealed_raw.ciphertext,
                    )
                )  # fmt: skip
            r.last_seq = max(r.last_seq, last)
            for k, v in fields.items():
                setattr(r, k, v)
            if timing and timing not in (r.timings or {}):
                r.timings = {**(r.timings or {}), timing: _iso(utcnow())}
            return r

        return await self.db.run(write)

    async def delete(self, pid: str) -> bool:
        def drop(db: Db) -> bool:
            db.execute(delete(PromptChunkRow).where(PromptChunkRow.prompt_id == pid))
            return bool(db.execute(delete(PromptRow).where(PromptRow.id == pid)).rowcount)  # type: ignore[attr-defined]

        return await self.db.run(drop)

    async def delete_user(self, user_id: str) -> int:
        def drop(db: Db) -> int:
            ids = select(PromptRow.id).where(PromptRow.user_id == user_id).scalar_subquery()
            db.execute(delete(PromptChunkRow).where(PromptChunkRow.prompt_id.in_(ids)))
            return int(db.execute(delete(PromptRow).where(PromptRow.user_id == user_id)).rowcount)  # type: ignore[attr-defined]

        return await self.db.run(drop)

    async def purge(self) -> int:
        """Ended prompts older than HEARTH_PROMPT_RETENTION: deleted with their events and answers."""
        cutoff = utcnow() - timedelta(seconds=self.s.prompt_retention)

        def drop(db: Db) -> int:
            old = select(PromptRow.id).where(PromptRow.ended_at.is_not(None), PromptRow.ended_at < cutoff)
            ids = list(db.scalars(old.limit(500)))
            if not ids:
                return 0
            db.execute(delete(PromptChunkRow).where(PromptChunkRow.prompt_id.in_(ids)))
            db.execute(delete(PromptRow).where(PromptRow.id.in_(ids)))
            return len(ids)

        return await self.db.run(drop)
