"""Waking the streams of a prompt when something new was stored: one asyncio.Event per prompt, replaced on each
notify (every waiter of the old one wakes, reads the store from its cursor, and waits on the new one)."""

from __future__ import annotations

import asyncio
import contextlib


class Changes:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, pid: str) -> None:
        ev = self._events.pop(pid, None)
        if ev is not None:
            ev.set()

    async def wait(self, pid: str, timeout: float) -> bool:
        """True when notified within `timeout` seconds (a caller re-reads the store either way)."""
        ev = self._events.setdefault(pid, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
            return True
        return False

    def ticket(self, pid: str) -> asyncio.Event:
        """The event the next notify sets: take it BEFORE reading the store, so nothing stored after the read is
        missed."""
        return self._events.setdefault(pid, asyncio.Event())
