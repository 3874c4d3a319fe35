"""The boot queue in isolation (pure asyncio: no sandbox needed to decide who boots next)."""

from __future__ import annotations

import asyncio

import pytest

from hearth.session.bootqueue import BootQueue, Priority


async def test_boots_beyond_capacity_wait_in_line_and_start_in_order() -> None:
    q = BootQueue(2)
    assert q.enter("a") and q.enter("b")
    assert not q.enter("c") and not q.enter("d")
    assert (q.position("c"), q.position("d"), q.position("a")) == (1, 2, None)
    order: list[str] = []

    async def boot(sid: str) -> None:
        await q.turn(sid)
        order.append(sid)

    tasks = [asyncio.create_task(boot(s)) for s in ("d", "c")]
    await asyncio.sleep(0)
    assert order == [] and q.booting == 2 and q.waiting == 2
    q.leave("a")
    await asyncio.wait_for(tasks[1], 1)  # c's turn
    assert order == ["c"] and q.position("d") == 1
    q.leave("b")
    await asyncio.gather(*tasks)
    assert order == ["c", "d"] and q.waiting == 0 and q.booting == 2


async def test_live_boots_go_before_background_refills() -> None:
    q = BootQueue(1)
    assert q.enter("live-0")
    assert not q.enter("pool-1", Priority.BACKGROUND)
    assert not q.enter("live-2")
    assert q.position("live-2") == 1 and q.position("pool-1") == 2
    q.leave("live-0")
    await q.turn("live-2")
    assert q.position("pool-1") == 1


async def test_leaving_while_queued_frees_the_place_and_wakes_nobody_wrongly() -> None:
    q = BootQueue(1)
    assert q.enter("a") and not q.enter("b") and not q.enter("c")
    waiter = asyncio.create_task(q.turn("b"))
    await asyncio.sleep(0)
    q.leave("b")  # cancelled while waiting (e.g. the session was cancelled)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert q.position("c") == 1
    q.leave("a")
    await asyncio.wait_for(q.turn("c"), 1)
    assert q.booting == 1


async def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError, match="HEARTH_MAX_BOOTS"):
        BootQueue(0)
    q = BootQueue(1)
    q.enter("a")
    with pytest.raises(ValueError, match="already"):
        q.enter("a")
    with pytest.raises(ValueError, match="not in the boot queue"):
        await q.turn("zzz")
