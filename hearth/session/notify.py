"""In-process change notification per session: waiters wake on any change, then re-read the store."""

from __future__ import annotations

import asyncio
import weakref


class Changes:
    def __init__(self) -> None:
        # Weak: an event lives only while someone waits on it. A waiter taken after a session's last change (a viewer
        # or status stream of an ended session) would otherwise stay here forever — one per session id, unbounded.
        self._events: weakref.WeakValueDictionary[str, asyncio.Event] = weakref.WeakValueDictionary()

    def waiter(self, session_id: str) -> asyncio.Event:
        """An event set at the next change of `session_id`. Take it *before* reading state to miss nothing; keep a
        reference to it while waiting."""
        ev = self._events.get(session_id)
        if ev is None:
            ev = asyncio.Event()
            self._events[session_id] = ev
        return ev

    def notify(self, session_id: str) -> None:
        ev = self._events.pop(session_id, None)
        if ev is not None:
            ev.set()
