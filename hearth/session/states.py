"""Session states and their explicit transition table; an illegal transition raises."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"  # waiting for a boot slot (hearth/session/bootqueue.py); the API shows its position
    STARTING = "starting"
    READY = "ready"
    AWAITING_USER = "awaiting_user"
    CREDENTIALS_CAPTURED = "credentials_captured"
    DELIVERED = "delivered"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def booting(self) -> bool:
        """Not ready yet: waiting for a boot slot or booting."""
        return self in (Status.QUEUED, Status.STARTING)


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
_ENDINGS = {Status.FAILED, Status.CANCELLED, Status.EXPIRED}

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.STARTING} | _ENDINGS),
    Status.STARTING: frozenset({Status.READY} | _ENDINGS),
    Status.READY: frozenset({Status.AWAITING_USER, Status.COMPLETED} | _ENDINGS),
    Status.AWAITING_USER: frozenset({Status.CREDENTIALS_CAPTURED} | _ENDINGS),
    Status.CREDENTIALS_CAPTURED: frozenset({Status.DELIVERED} | _ENDINGS),
    Status.DELIVERED: frozenset({Status.COMPLETED, Status.FAILED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.EXPIRED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, current: Status, target: Status) -> None:
        super().__init__(f"illegal session transition {current.value} → {target.value}")
        self.current = current
        self.target = target


def check_transition(current: Status, target: Status) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
