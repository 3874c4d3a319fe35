"""Watching a starting Firecracker VMM: its API socket's first accept, any work raced against its exit, and the
error that names the exit with the VMM's last words."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

from hearth.errors import DriverError, Hop
from hearth.sandbox import procs as proc
from hearth.sandbox.firecracker.api import ApiUnreachable
from hearth.sandbox.firecracker.plan import LOG, Layout

T = TypeVar("T")


async def wait_socket(lay: Layout, child: asyncio.subprocess.Process, timeout: float) -> None:
    """Until the API socket accepts a connection (bounded; the caller races this against the process)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_unix_connection(str(lay.api_socket))
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise DriverError(
                    Hop.DRIVER,
                    f"firecracker (pid {child.pid}) did not open {lay.api_socket} within {timeout:g}s",
                    f"see {lay.console_log}",
                ) from None
            await asyncio.sleep(0.01)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def until_exit(child: asyncio.subprocess.Process, lay: Layout, work: Awaitable[T], doing: str) -> T:
    """Run `work`, but fail at once — with the exit code and the VMM's last words — if the process exits."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(child.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            try:
                return task.result()
            except ApiUnreachable:
                # The socket broke: if that is because the process is exiting, say so instead.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(gone), 1.0)
                if child.returncode is None:
                    raise
        raise exited(child, lay, doing)
    finally:
        for t in (task, gone):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t


def exited(child: asyncio.subprocess.Process, lay: Layout, doing: str) -> DriverError:
    """The error for a VMM that exited while `doing`: its exit and last words."""
    rc = child.returncode
    how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
    # stderr and the guest's serial console (a kernel panic shows here), then Firecracker's own errors
    last = proc.tail_lines(lay.console_log) or "no output"
    errors = proc.tail_lines(lay.host(LOG), keep=(":ERROR", ":WARN"))
    if errors:
        last += f" | firecracker.log: {errors}"
    return DriverError(
        Hop.DRIVER,
        f"firecracker {how} while {doing}: {last}",
        f"see {lay.console_log} and {lay.host(LOG)}",
    )
