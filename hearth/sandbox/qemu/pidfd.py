"""Signalling QEMU through a pidfd: the descriptor names one process, so a signal can never reach another process
that was given the same pid after QEMU exited (a bare `os.kill(pid)` could). "Already gone" is success."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def opened(pid: int) -> Iterator[int | None]:
    """A pidfd for `pid` while the block runs; None when no such process exists (already gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def kill(pidfd: int, sig: int = signal.SIGKILL) -> bool:
    """Send `sig` to the process of `pidfd`; False when it has already exited (success for a stop)."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True
