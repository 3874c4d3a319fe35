"""A sweeper's own evidence that a node stopped beating (issue 24): a node is judged down only when THIS sweeper saw
its heartbeat unchanged for `dead_after` seconds of its own monotonic clock, over sweeps that all reached the store,
one after another with no gap longer than `max_gap`.

A wall-clock comparison of `heartbeat_at` with "now" cannot tell a dead node from a store that nobody could reach:
after a database outage every beat is old, and the first sweeper back would mark every live node down. Here a
sweeper that lost the store (or stalled) forgets what it saw and starts watching again; the nodes beat again within
a heartbeat of the store's return, so none of them is ever judged from the outage. Clock skew between hosts does not
matter either: the beats are compared only with themselves, and time is this process's monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime


class Watch:
    def __init__(self, dead_after: float, max_gap: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.dead_after = dead_after
        self.max_gap = max_gap  # two answered sweeps further apart than this: the store may have been away between
        self._clock = clock
        self._seen: dict[str, tuple[datetime, float]] = {}  # node → (its beat as last read, when first read so)
        self._last: float | None = None  # the last sweep that reached the store

    def store_lost(self) -> None:
        """The store did not answer this sweeper (or its own beat): nothing it saw so far may judge anyone."""
        self._seen.clear()
        self._last = None

    def stale(self, beats: Mapping[str, datetime]) -> set[str]:
        """Within a sweep that reached the store: the nodes whose beat this sweeper watched stand still for
        `dead_after` (`beats`: node → heartbeat_at as read now, for the nodes that may be judged)."""
        now = self._clock()
        if self._last is None or now - self._last > self.max_gap:
            self._seen.clear()  # the first answered sweep after a loss (or a stall): watching starts over
        self._last = now
        out: set[str] = set()
        for node, beat in beats.items():
            seen = self._seen.get(node)
            if seen is None or seen[0] != beat:
                self._seen[node] = (beat, now)
            elif now - seen[1] >= self.dead_after:
                out.add(node)
        return out
