"""Waiting, without sleeps of a fixed length, until a sandbox's port accepts a connection — and the bounded retry
with a short, growing back-off that every readiness gate uses (hearth/lifecycle/readiness.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hearth.errors import Hop, NotReady
from hearth.fabric.dial import open_connection
from hearth.rfb.client import RfbError

BACKOFF = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.25)  # a desktop is up ~50 ms after its agent: look often early


async def retry(deadline: float, hop: Hop, what: str, hint: str, attempt: Callable[[float], Awaitable[Any]]) -> Any:
    """`attempt(timeout)` until it returns (its result) or `deadline` passes: then NotReady at `hop`, naming `what`
    and the last thing observed."""
    last = "no attempt made"
    for i in range(1_000_000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return await attempt(min(remaining, 3.0))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, RfbError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        await asyncio.sleep(min(BACKOFF[min(i, len(BACKOFF) - 1)], max(0.0, deadline - time.monotonic())))
    raise NotReady(hop, f"{what} not ready in time (last: {last})", hint)


async def wait_listening(
    netns: str | None, ip: str, port: int, deadline: float, exited: Callable[[], None], hint: str
) -> None:
    """The agent's port accepts a connection (the agent's first act); `exited` is called before each attempt and
    raises (a HearthError naming why) when the sandbox already ended — a failed start is noticed at once."""

    async def attempt(timeout: float) -> None:
        exited()
        _, writer = await open_connection(netns, ip, port, min(timeout, 0.5))
        writer.close()

    await retry(deadline, Hop.DRIVER, f"the sandbox agent on {ip}:{port}", hint, attempt)
