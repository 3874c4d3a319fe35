"""What a session is, as everyone outside the session core sees it: `SessionView`, one row of `sessions` (frozen),
`SessionNotFound`, and whether a session's sandbox has a desktop (`has_desktop`, from its sign-in mode)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hearth.providers.model import SigninMode
from hearth.session.states import Status
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


def has_desktop(mode: SigninMode) -> bool:
    """Whether sandboxes of this mode run a desktop (display, VNC, Chromium): the one place that says so; the sandbox
    spec and the readiness gates both follow it (`SandboxSpec.desktop`)."""
    return mode is SigninMode.REMOTE_BROWSER


def aware(dt: datetime) -> datetime:
    """`dt` with a time zone (SQLite hands back naive UTC datetimes)."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
