"""Waiting, without sleeps of a fixed length, until a sandbox's port accepts a connection — the agent's start as every
driver that runs the agent as a process waits for it (its notification pipe, else its port) — and the bounded retry
with a short, growing back-off that every readiness gate uses (hearth/lifecycle/readiness.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hearth.errors import DriverError, Hop, NotReady
from hearth.fabric.dial import open_connection
from hearth.rfb.client import RfbError
from hearth.sandbox.procs import tail

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


async def notified(fd: int, timeout: float) -> bool:
    """Whether `listening` arrives on the pipe `fd` within `timeout` (False on EOF: the agent exited; closes `fd`)."""
    loop = asyncio.get_running_loop()
    told: asyncio.Future[bool] = loop.create_future()
    got = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        got.extend(chunk)
        if (not chunk or b"\n" in got) and not told.done():
            told.set_result(got.startswith(b"listening"))

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(told, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def wait_agent(
    netns: str | None,
    ip: str,
    port: int,
    proc: asyncio.subprocess.Process,
    notices: int,
    timeout: float,
    log_path: Path,
    fix: str,
) -> None:
    """Until the agent listens (its first act): told by the agent on its notification pipe (`notices`, closed here;
    -1: none) — or, when the pipe ends without it, until its port answers, failing fast, with its log's tail and
    `fix`, when it exited."""
    if notices >= 0 and await notified(notices, timeout):
        return

    def exited() -> None:
        if proc.returncode is not None:
            raise DriverError(
                Hop.DRIVER,
                f"the sandbox agent exited with {proc.returncode} during start: {tail(log_path) or 'no output'}",
                fix,
            )

    await wait_listening(netns, ip, port, time.monotonic() + timeout, exited, f"see {log_path}")
