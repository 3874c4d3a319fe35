"""Admission control for boots: at most `capacity` sandboxes boot at once on this controller; the rest wait in line.

Booting (bubblewrap, the agent, the X/VNC server, Chromium) is CPU-bound: 60 at once on 2 cores each take ~30 s and
some miss their readiness deadline; one or two at a time each take a fraction of a second, so a queue finishes the
whole storm sooner and every boot keeps its own deadline (which starts when its turn comes, not at create).

Live boots (a person waits) go before background ones (the warm pool's refills): FIFO within a priority. The queue
is this controller's memory only: after a restart the reconciler puts the sessions still `queued` in the store back in
line, oldest first (`SessionService.readmit`); boots the restart interrupted are failed.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from enum import IntEnum


class Priority(IntEnum):
    LIVE = 0  # a person created the session and waits for it
    BACKGROUND = 1  # a pool refill: only when no live boot waits


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    sid: str = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)


class BootQueue:
    """A priority semaphore keyed by session id. `enter` never blocks: it grants at once or queues the boot."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("boot capacity must be at least 1 (HEARTH_MAX_BOOTS)")
        self.capacity = capacity
        self._running: set[str] = set()
        self._waiting: list[_Waiter] = []  # kept sorted: priority, then arrival
        self._seq = itertools.count()

    def enter(self, sid: str, priority: Priority = Priority.LIVE) -> bool:
        """Take a boot slot for `sid` now (True) or join the line (False: `turn` waits for the slot)."""
        if sid in self._running or any(w.sid == sid for w in self._waiting):
            raise ValueError(f"session {sid} is already in the boot queue")
        if len(self._running) < self.capacity and not self._waiting:
            self._running.add(sid)
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiter(int(priority), next(self._seq), sid, fut))
        self._waiting.sort()
        return False

    async def turn(self, sid: str) -> None:
        """Wait until `sid` holds a boot slot (returns at once when it already does)."""
        if sid in self._running:
            return
        for w in self._waiting:
            if w.sid == sid:
                await asyncio.shield(w.granted)
                return
        raise ValueError(f"session {sid} is not in the boot queue")

    def leave(self, sid: str) -> None:
        """The boot of `sid` ended (ready, failed or cancelled, queued or not): its slot goes to the next in line."""
        self._running.discard(sid)
        for w in [w for w in self._waiting if w.sid == sid]:
            w.granted.cancel()
            self._waiting.remove(w)
        while self._waiting and len(self._running) < self.capacity:
            nxt = self._waiting.pop(0)
            self._running.add(nxt.sid)
            if not nxt.granted.done():
                nxt.granted.set_result(None)

    def position(self, sid: str) -> int | None:
        """1 for the next boot to start, … ; None when `sid` is not waiting."""
        for i, w in enumerate(self._waiting, 1):
            if w.sid == sid:
                return i
        return None

    @property
    def booting(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
