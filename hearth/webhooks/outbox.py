"""The webhook outbox: one row per event, added inside the transaction that records the state change it reports —
so an event exists exactly when its change was committed (no event for a rolled-back change, no change without its
event), and it survives any restart. hearth/webhooks/sender.py sends the rows.

Events (the body of each webhook; `data` never holds credentials, codes or sign-in URLs):

    {"type": "session.<status>", "timestamp": "<when it happened, ISO 8601 UTC>", "data": {"session_id", "user_id",
     "provider", "mode", "status", "previous_status", "reason", "hop", "node_id"}}
    {"type": "credential.sealed" | "credential.delivered" | "credential.revoked", "timestamp": …, "data": {"user_id",
     "provider", "session_id", "files"}}   (files: target paths in the CLI sandbox, never contents)

Order: rows of one `stream` are sent one after another, in the order they were written. A session's stream holds its
states and the credential events of the credentials it sealed; a credential with no session is its user's stream.
Nothing is written while HEARTH_WEBHOOK_URL is unset.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.store.models import OutboxRow, SessionRow


class CredentialEvent(StrEnum):
    SEALED = "credential.sealed"  # stored in the vault (the session's step to credentials_captured)
    DELIVERED = "credential.delivered"  # installed in the user's CLI sandbox
    REVOKED = "credential.revoked"  # removed (DELETE /api/auth/credentials/{user}/{provider})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def body(event_type: str, data: dict[str, Any], at: str | None = None) -> str:
    """The webhook's JSON body, compact: it is stored and sent byte for byte (the signature covers it)."""
    return json.dumps({"type": event_type, "timestamp": at or _now(), "data": data}, separators=(",", ":"))


class Outbox:
    """Adds events to the caller's transaction. Disabled (adds nothing) while HEARTH_WEBHOOK_URL is unset."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = bool(settings.webhook_url)
        self.node_id = settings.node_id

    def add(self, db: Db, event_type: str, stream: str, data: dict[str, Any], node_id: str | None = None) -> None:
        if not self.enabled:
            return
        db.add(
            OutboxRow(
                msg_id=f"msg_{uuid.uuid4().hex}",
                stream=stream[:240],
                type=event_type[:64],
                body=body(event_type, data),
                node_id=node_id or self.node_id,
                state="pending",
                attempts=0,
                next_attempt_at=datetime.now(UTC),
            )
        )

    def session(
        self,
        db: Db,
        row: SessionRow,
        status: str,
        previous: str | None,
        reason: str | None = None,
        hop: str | None = None,
    ) -> None:
        """`session.<status>`: the session `row` moves from `previous` (None: just created) to `status`."""
        data = {
            "session_id": row.id,
            "user_id": row.user_id,
            "provider": row.provider,
            "mode": row.mode,
            "status": status,
            "previous_status": previous,
            "reason": reason,
            "hop": hop,
            "node_id": row.node_id,
        }
        self.add(db, f"session.{status}", row.id, data, node_id=row.node_id)

    def sessions_failing(self, db: Db, ids: Iterable[str], reason: str, hop: str) -> None:
        """`session.failed` for each of `ids`, read before the caller's bulk update fails them."""
        if not self.enabled:
            return
        for row in db.scalars(select(SessionRow).where(SessionRow.id.in_(list(ids))).order_by(SessionRow.id)):
            self.session(db, row, "failed", row.status, reason, hop)

    def credential(
        self, db: Db, event: CredentialEvent, user_id: str, provider: str, files: list[str], session_id: str | None
    ) -> None:
        data = {"user_id": user_id, "provider": provider, "session_id": session_id, "files": sorted(files)}
        self.add(db, event.value, session_id or f"user:{user_id}", data)
