"""In-process change notification per session: waiters wake on any change, then re-read the store."""

from __future__ import annotations

import asyncio


class Changes:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def waiter(self, session_id: str) -> asyncio.Event:
        """An event set at the next change of `session_id`. Take it *before* reading state to miss nothing."""
        ev = self._events.get(session_id)
        if ev is None:
            ev = self._events[session_id] = asyncio.Event()
        return ev

    def notify(self, session_id: str) -> None:
        ev = self._events.pop(session_id, None)
        if ev is not None:
            ev.set()
