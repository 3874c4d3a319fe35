"""Group commits: calls of one keyed store write that arrive together run as one transaction.

`Coalesced(work)` is called with one key at a time (`await deletes(owner)`); the first call starts a batch on the next
turn of the event loop, calls arriving meanwhile (a drain ends many sandboxes at once) join it, and calls arriving
while a batch runs make up the next one. `work(keys)` runs once per batch (one statement for all its keys, e.g.
`DELETE … WHERE owner_id IN (…)`); each caller gets its batch's outcome: None, or the batch's exception (a
StoreError then reaches every caller of that batch, as it would have reached each one alone). A caller cancelled
while it waits does not cancel the batch: the others wait for the same work. Alone, a call costs what it did before:
one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
MAX_BATCH = 500  # keys per transaction: far below SQLite's and PostgreSQL's bound parameters


class Coalesced(Generic[K]):
    def __init__(self, work: Callable[[list[K]], Awaitable[object]], max_batch: int = MAX_BATCH) -> None:
        self._work = work
        self._max = max_batch
        self._waiting: dict[K, asyncio.Future[None]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # how many times `work` ran (tests, benches)

    async def __call__(self, key: K) -> None:
        fut = self._waiting.get(key)
        if fut is None:
            fut = self._waiting[key] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve)  # a cancelled caller leaves no "exception was never retrieved"
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="hearth-store-coalesced")
        await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._waiting:
            keys = list(self._waiting)[: self._max]
            batch = {k: self._waiting.pop(k) for k in keys}
            self.batches += 1
            try:
                await self._work(keys)
            except Exception as exc:
                for f in batch.values():
                    if not f.done():
                        f.set_exception(exc)
            except BaseException:  # the loop is going away: no caller waits for an outcome it cannot get
                for f in (*batch.values(), *self._waiting.values()):
                    f.cancel()
                self._waiting.clear()
                raise
            else:
                for f in batch.values():
                    if not f.done():
                        f.set_result(None)


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
