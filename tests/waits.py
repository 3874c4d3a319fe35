"""The one bounded wait of the tests: `eventually(probe, timeout, what)` polls until the probe has an answer and fails
naming `what` and the last thing it saw. Never a sleep as synchronisation, never an assertion on wall-clock time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# What a probe may raise while the thing it looks at is not there yet (a port not listening, a partial read, a file
# half written, a check that does not hold yet); anything else is a bug in the test and propagates.
NOT_YET: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.IncompleteReadError,
    ValueError,
    AssertionError,
)


async def eventually(
    probe: Callable[[], Awaitable[T | bool | None]],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
) -> T:
    """Await `probe` until it returns an answer — anything but None or False — without raising one of `NOT_YET`;
    returns that answer. Raises AssertionError naming `what` and the last observation after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = await probe()
            if got is not None and got is not False:
                return got  # type: ignore[return-value]  # None and False excluded above
            last = got
        except NOT_YET as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)
