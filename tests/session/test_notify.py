"""Change notification: waiters wake on the next change, and nobody's abandoned waiter is kept."""

from __future__ import annotations

import asyncio
import gc

from hearth.session.notify import Changes


async def test_waiter_wakes_on_the_next_change() -> None:
    c = Changes()
    w = c.waiter("s1")
    assert c.waiter("s1") is w  # waiters of one session share the event
    c.notify("s2")
    assert not w.is_set()
    c.notify("s1")
    await asyncio.wait_for(w.wait(), 1)
    assert c.waiter("s1") is not w  # the next change gets a fresh event


async def test_abandoned_waiters_are_not_kept() -> None:
    """A viewer or status stream of an ended session takes a waiter no change will ever set: it must not pile up
    (one entry per session id, for the controller's whole life)."""
    c = Changes()
    for i in range(1000):
        c.waiter(f"ended-{i}")
    gc.collect()
    assert len(c._events) == 0
    held = c.waiter("live")
    gc.collect()
    assert list(c._events) == ["live"] and held is c.waiter("live")
