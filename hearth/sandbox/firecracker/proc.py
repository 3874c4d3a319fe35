"""Finding, signalling and waiting for VMM processes by what they are (their argv), not by what we remember.

After a controller restart the firecracker processes are no longer our children; `destroy(spec)` finds them in
`/proc/*/cmdline` and uses pidfds (Linux ≥ 5.3; Firecracker itself needs ≥ 5.10) so a recycled pid can never be
signalled by mistake: the pidfd is opened first, then the argv is checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")
Matcher = Callable[[list[str]], bool]


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]] if raw else []


def is_zombie(pid: int) -> bool:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return True  # gone counts as not running
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def find_pids(match: Matcher) -> list[int]:
    """Pids of running (non-zombie) processes whose argv matches, excluding ourselves."""
    me = os.getpid()
    out = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(PROC):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            argv = cmdline(int(entry.name))
            if argv and match(argv) and not is_zombie(int(entry.name)):
                out.append(int(entry.name))
    return sorted(out)


def open_pidfd(pid: int, match: Matcher) -> int | None:
    """A pidfd for `pid` if it still is the process `match` describes (checked after opening: no pid reuse)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    argv = cmdline(pid)
    if not argv or not match(argv):
        os.close(fd)
        return None
    return fd


def send(fd: int, sig: int = signal.SIGKILL) -> None:
    """Signal through a pidfd; a process that already exited is fine."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(fd, sig)


async def wait_exit(fd: int, timeout: float) -> bool:
    """Wait until the process behind `fd` has exited (a pidfd polls readable then); False after `timeout`."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
