"""Group commits (hearth/store/coalesce.py): keyed calls arriving together run as one batch; each caller gets its
batch's outcome; a cancelled caller does not cancel the others' work."""

from __future__ import annotations

import asyncio

import pytest

from hearth.errors import StoreError
from hearth.store.coalesce import Coalesced


async def test_calls_arriving_together_run_as_few_batches() -> None:
    seen: list[list[int]] = []

    async def work(keys: list[int]) -> None:
        seen.append(keys)
        await asyncio.sleep(0.01)

    run = Coalesced(work)
    await asyncio.gather(*(run(k) for k in range(100)))
    assert sorted(k for batch in seen for k in batch) == list(range(100))
    assert len(seen) <= 2  # one by one this was 100
    await run(7)  # alone: one batch of its own
    assert seen[-1] == [7]


async def test_a_batch_is_capped() -> None:
    seen: list[list[int]] = []

    async def work(keys: list[int]) -> None:
        seen.append(keys)

    await asyncio.gather(*(Coalesced(work, max_batch=10)(k) for k in range(1)))
    run = Coalesced(work, max_batch=10)
    await asyncio.gather(*(run(k) for k in range(35)))
    assert [len(b) for b in seen[1:]] == [10, 10, 10, 5]


async def test_a_failed_batch_reaches_each_of_its_callers_and_the_next_batch_runs() -> None:
    calls = 0

    async def work(keys: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("the state store is unavailable: test")

    run = Coalesced(work)
    results = await asyncio.gather(*(run(k) for k in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    await run(1)  # the store is back
    assert calls == 2


async def test_a_cancelled_caller_does_not_cancel_the_batch() -> None:
    done: list[int] = []
    gate = asyncio.Event()

    async def work(keys: list[int]) -> None:
        await gate.wait()
        done.extend(keys)

    run = Coalesced(work)
    first, second = asyncio.create_task(run(1)), asyncio.create_task(run(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert sorted(done) == [1, 2]
