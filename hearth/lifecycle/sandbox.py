"""The sandbox object: one per sandbox this controller runs, whatever it serves (a browser session, a CLI sandbox).

States are an enum with an explicit transition table; the keep/destroy policy is decided once, from the final state
(`Final`): only a FAILED sandbox is ever kept, and only with HEARTH_KEEP_FAILED.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from hearth.sandbox.base import SandboxSpec


class Kind(enum.StrEnum):
    SESSION = "session"  # a browser (or direct sign-in) session's sandbox: disposable
    CLI = "cli"  # a user's CLI sandbox: persistent home


class SandboxState(enum.StrEnum):
    BOOTING = "booting"
    RUNNING = "running"
    POOLED = "pooled"  # up and ready, owned by the warm pool until handed out (hearth/session/pool.py)
    KEPT = "kept"  # failed, kept for debugging (HEARTH_KEEP_FAILED)
    GONE = "gone"


class Final(enum.Enum):
    """How a sandbox's life ended: the one input of the keep/destroy decision."""

    DONE = "done"  # completed, cancelled, expired, stopped: always destroyed
    FAILED = "failed"  # kept only with HEARTH_KEEP_FAILED


TRANSITIONS: dict[SandboxState, frozenset[SandboxState]] = {
    SandboxState.BOOTING: frozenset({SandboxState.RUNNING, SandboxState.POOLED, SandboxState.KEPT, SandboxState.GONE}),
    SandboxState.POOLED: frozenset({SandboxState.RUNNING, SandboxState.GONE}),
    SandboxState.RUNNING: frozenset({SandboxState.KEPT, SandboxState.GONE}),
    SandboxState.KEPT: frozenset({SandboxState.GONE}),
    SandboxState.GONE: frozenset(),
}


class IllegalSandboxTransition(Exception):
    pass


def keep(final: Final, keep_failed: bool) -> bool:
    """The keep/destroy policy, decided once: keep only failed sandboxes, and only when asked to."""
    return final is Final.FAILED and keep_failed


@dataclass
class Sandbox:
    """A sandbox this controller runs: its owner (session id or CLI owner id), spec (holding the agent secret),
    state, and the boot task while it boots."""

    owner: str
    kind: Kind
    spec: SandboxSpec
    state: SandboxState = SandboxState.BOOTING
    pid: int | None = None
    boot: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def secret(self) -> str:
        return self.spec.secret

    @property
    def slot(self) -> int:
        return self.spec.slot.index

    def move(self, target: SandboxState) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalSandboxTransition(f"sandbox {self.owner}: {self.state.value} → {target.value}")
        self.state = target

    def __repr__(self) -> str:  # the spec holds the secret: never show it
        return f"Sandbox(owner={self.owner!r}, kind={self.kind.value}, slot={self.slot}, state={self.state.value})"
