"""The viewer gauge: connected viewers per session. The gateway adds and removes them; the session service's expiry
reads the count (a connected viewer is activity) and a draining `hearth serve` waits until none is left."""

from __future__ import annotations

import asyncio


class ViewerGauge:
    """Connected viewers per session."""

    def __init__(self) -> None:
        self._n: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, session_id: str) -> None:
        self._n[session_id] = self._n.get(session_id, 0) + 1
        self._idle.clear()

    def remove(self, session_id: str) -> None:
        left = self._n.get(session_id, 1) - 1
        if left > 0:
            self._n[session_id] = left
        else:
            self._n.pop(session_id, None)
        if not self._n:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no viewer is connected; whether that happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def count(self, session_id: str) -> int:
        return self._n.get(session_id, 0)

    def total(self) -> int:
        return sum(self._n.values())
