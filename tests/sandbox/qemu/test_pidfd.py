"""QEMU is stopped through a pidfd (hearth/sandbox/qemu/pidfd.py): real child processes, no QEMU needed."""

from __future__ import annotations

import signal
import subprocess
import sys

from hearth.sandbox.qemu import pidfd


def _child() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_kill_through_the_pidfd_stops_that_process() -> None:
    proc = _child()
    try:
        with pidfd.opened(proc.pid) as fd:
            assert fd is not None
            assert pidfd.kill(fd, signal.SIGKILL) is True
            assert proc.wait(timeout=60) == -signal.SIGKILL
            # exited and reaped: the pidfd still names that process only, and "already gone" is success
            assert pidfd.kill(fd, signal.SIGKILL) is False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_opening_a_process_that_is_gone_yields_none() -> None:
    proc = _child()
    proc.kill()
    proc.wait(timeout=60)  # reaped: its pid names no process (until reused, which the pidfd protects against)
    with pidfd.opened(proc.pid) as fd:
        assert fd is None
