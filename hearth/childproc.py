"""Signalling our own asyncio child processes without racing asyncio's child watcher.

`asyncio.subprocess.Process.kill()` and `.send_signal()` go through `Popen.send_signal`, which first calls `poll()`
— `waitpid(WNOHANG)`. When the child has just exited, that reaps it behind the watcher's back: asyncio then logs
"Unknown child process pid N, will report returncode 255" and reports 255 instead of the real status (seen on every
sandbox teardown). A plain kill(2) on a child we have not reaped cannot reach another process (its PID stays ours
until it is reaped) and never reaps; the watcher collects the real exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


def signal_child(proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to our child unless it already exited; an exiting child is not an error."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


async def kill_and_reap(proc: asyncio.subprocess.Process, timeout: float) -> bool:
    """SIGKILL our child and wait (bounded) until the watcher has reaped it; False when it did not exit in time."""
    signal_child(proc, signal.SIGKILL)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        return False
    return True
