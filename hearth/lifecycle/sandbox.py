"""The sandbox object: one per sandbox this controller runs, whatever it serves (a browser session, a CLI sandbox).

Callers use its verbs, not the manager's slot numbers and secrets: `sb.agent()` (a client for its agent),
`sb.target` (its readiness target: address and ports inside the fabric), `await sb.alive()`, `await sb.end()`. It
holds its own cleanup stack (what its boot acquired, undone in reverse order when it is destroyed: its processes, its
row, its way out, the manager's memory of it, its lease).

States are an enum with an explicit transition table; the keep/destroy policy is decided once, from the final state
(`Final`): only a FAILED sandbox is ever kept, and only with HEARTH_KEEP_FAILED.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from hearth.agentlink.client import AgentClient
from hearth.lifecycle.readiness import Target
from hearth.sandbox.base import Driver, SandboxSpec
from hearth.store.models import OwnerKind


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
    """A sandbox this controller runs: its owner (session id, CLI or pool owner id) and who that is (`owner_kind`),
    spec (holding the agent secret), state, the boot task while it boots; the fabric namespace it is reached in, its
    driver and its manager's `end` (set by the manager that runs it), and its cleanup stack."""

    owner: str
    kind: Kind
    spec: SandboxSpec
    state: SandboxState = SandboxState.BOOTING
    pid: int | None = None
    boot: asyncio.Task[None] | None = field(default=None, repr=False)
    owner_kind: OwnerKind = OwnerKind.SESSION
    netns: str | None = None
    driver: Driver | None = field(default=None, repr=False)
    ender: Callable[[Sandbox, Final], Awaitable[bool]] | None = field(default=None, repr=False)
    cleanup: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)
    _closing: asyncio.Future[None] | None = field(default=None, repr=False)

    # ---- verbs -------------------------------------------------------------------------------------------------
    @property
    def target(self) -> Target:
        """Where its readiness gates look: its address and ports inside the fabric namespace."""
        return Target.of(self.spec, self.netns)

    def agent(self) -> AgentClient:
        """A client for its agent (its address inside the fabric, its current secret)."""
        return AgentClient(self.netns, str(self.spec.slot.ip), self.spec.agent_port, self.secret)

    async def alive(self) -> bool:
        """Whether its processes still run (its driver looks)."""
        return self.driver is not None and self.state is not SandboxState.GONE and await self.driver.alive(self.spec)

    async def close(self) -> None:
        """Undo its cleanup stack, once: a second caller waits for the first; a cancelled caller does not cut it
        short (the manager's `end` calls this; callers call `end`)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.cleanup.aclose())
        await asyncio.shield(self._closing)

    async def end(self, final: Final = Final.DONE) -> bool:
        """End it through the manager that runs it (the keep/destroy policy decides); returns whether it was kept."""
        if self.ender is None:
            raise RuntimeError(f"sandbox {self.owner} is run by no manager")
        return await self.ender(self, final)

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
