"""A prompt's states and their transitions (an explicit table: anything else is a bug)."""

from __future__ import annotations

from enum import StrEnum


class PromptStatus(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"  # the CLI sandbox is being started or resumed, the credential delivered
    RUNNING = "running"  # the CLI runs in the sandbox
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({PromptStatus.COMPLETED, PromptStatus.FAILED, PromptStatus.CANCELLED, PromptStatus.TIMED_OUT})
ACTIVE = frozenset({PromptStatus.QUEUED, PromptStatus.STARTING, PromptStatus.RUNNING})
_ENDS = TERMINAL - {PromptStatus.COMPLETED}
TRANSITIONS: dict[PromptStatus, frozenset[PromptStatus]] = {
    PromptStatus.QUEUED: frozenset({PromptStatus.STARTING} | _ENDS),
    PromptStatus.STARTING: frozenset({PromptStatus.RUNNING} | _ENDS),
    PromptStatus.RUNNING: TERMINAL,
    **{t: frozenset() for t in TERMINAL},
}


class Step(StrEnum):
    """The step a failure names (the person reads it; API and events carry it)."""

    SANDBOX = "sandbox"
    CREDENTIALS = "credentials"
    CLI = "cli"
    PROVIDER_API = "provider_api"
    TIMEOUT = "timeout"
    CONTROLLER = "controller"


def allowed(src: PromptStatus, dst: PromptStatus) -> bool:
    return dst in TRANSITIONS[src]
