"""What a session is, as everyone outside the session core sees it: `SessionView`, one row of `sessions` (frozen), and
`SessionNotFound`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hearth.session.states import Status
from hearth.signin.modes import SigninMode
from hearth.store.models import SessionRow


class SessionNotFound(Exception):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id}")
        self.session_id = session_id


@dataclass(frozen=True)
class SessionView:
    id: str
    user_id: str
    provider: str | None
    mode: SigninMode
    status: Status
    reason: str | None
    hop: str | None
    driver: str
    slot: int | None
    sandbox_ip: str | None
    timings: dict[str, float]
    created_at: datetime
    updated_at: datetime
    node_id: str = "local"  # the node whose sandbox serves it: only that node acts on it (hearth/session/owner.py)

    @classmethod
    def of(cls, row: SessionRow) -> SessionView:
        return cls(
            row.id,
            row.user_id,
            row.provider,
            SigninMode(row.mode),
            Status(row.status),
            row.reason,
            row.hop,
            row.driver,
            row.slot,
            row.sandbox_ip,
            dict(row.timings or {}),
            row.created_at,
            row.updated_at,
            row.node_id,
        )


def aware(dt: datetime) -> datetime:
    """`dt` with a time zone (SQLite hands back naive UTC datetimes)."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
