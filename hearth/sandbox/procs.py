"""The one process module of hearth: find processes (by network/PID namespace, or by argv), signal them through
pidfds, wait for them, tell a process apart from a recycled PID (start time), and tail a log — used by every driver
(netns, qemu, firecracker), the lifecycle (adoption after a restart) and the doctor.

The processes of a namespace sandbox are found from kernel facts alone — no in-memory state, no `ip` text parsing —
and stopped.

After a controller restart a VMM is no longer our child: it is found by its argv in `/proc/*/cmdline`, and a pidfd
is opened first, then the argv checked again, so a recycled pid is never signalled.

A process belongs to the sandbox when its network namespace is the sandbox's (same device and inode as the bind
mount `/run/netns/<name>`), or when it lives in a PID namespace that a sandbox process lives in (other than the
controller's own): a sandboxed program that unshared a network namespace of its own is still found. Zombies
count as gone. Signals go through pidfds, re-checked after opening, so a recycled PID is
never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hearth.childproc import signal_child
from hearth.errors import DriverError, Hop
from hearth.fabric.dial import NETNS_RUN_DIR

NsId = tuple[int, int]  # (st_dev, st_ino) of a namespace file
PROC = Path("/proc")
Matcher = Callable[[list[str]], bool]
Rows = list[tuple[int, NsId, NsId | None]]  # (pid, netns, pidns) of every live process: one pass over /proc


def ns_id(path: str | os.PathLike[str]) -> NsId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(name: str, rows: Rows | None = None) -> list[int]:
    """Live processes whose network namespace is `name` (compared by inode), in `rows` (a pass over /proc from
    `SharedScan`; None: a pass of its own)."""
    target = ns_id(NETNS_RUN_DIR / name)
    if target is None:
        return []
    return sorted(pid for pid, net, _ in (_scan() if rows is None else rows) if net == target)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the PID it names one
    process for good — a recycled PID has another start time. None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def same_process(pid: int, started: int | None) -> bool:
    """Whether `pid` still is the live process that started at `started` (not a zombie, not a recycled PID)."""
    return started is not None and start_time(pid) == started and not _dead(pid)


def tail_lines(path: str | os.PathLike[str], keep: tuple[str, ...] = (), limit: int = 300) -> str:
    """The last meaningful line(s) of a log for an error message (only lines containing one of `keep`, if given)."""
    text = tail(path, 8192)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and (not keep or any(k in ln for k in keep))]
    return " | ".join(lines[-2:])[-limit:]


def tail(path: str | os.PathLike[str], limit: int = 600) -> str:
    """The last `limit` bytes of a log file, decoded; empty when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _dead(pid: int) -> bool:
    """Exited: gone, or a zombie (bwrap's PID-namespace init can linger as one until the host's init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _scan() -> Rows:
    """(pid, netns, pidns) of every live process; a zombie's namespace links may still resolve, so check state."""
    out: list[tuple[int, NsId, NsId | None]] = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            net, pidns = ns_id(f"/proc/{entry.name}/ns/net"), ns_id(f"/proc/{entry.name}/ns/pid")
            if net is not None and not _dead(int(entry.name)):
                out.append((int(entry.name), net, pidns))
    return out


class SharedScan:
    """One pass over /proc shared by every waiter of one event loop that asked for it before the pass began.

    A pass reads every process of the host (O(processes)); a drain of 1,000 sandboxes (3-4 processes each) would
    otherwise scan once per sandbox per poll round — O(sandboxes²). With it, the sandboxes stopping at once share
    each round's pass. A waiter only ever gets a pass that started after it asked, so "nothing left" is as true as
    with a pass of its own."""

    def __init__(self) -> None:
        self._task: asyncio.Future[Rows] | None = None
        self._since = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def rows(self, max_age: float = 0.0) -> Rows:
        """A pass begun after this call, or at most `max_age` seconds before it (liveness checks one after another:
        the watchdog asks about every sandbox each tick, and one pass answers them all)."""
        asked, loop = time.monotonic() - max_age, asyncio.get_running_loop()
        while True:
            task = self._task if self._loop is loop else None
            if task is None or (task.done() and self._since < asked):
                self._since, self._loop = time.monotonic(), loop
                self._task = task = asyncio.ensure_future(asyncio.to_thread(_scan))
            if self._since >= asked:
                return await asyncio.shield(task)
            with contextlib.suppress(Exception):
                await asyncio.shield(task)  # an older pass in flight: let it finish, then start one for us


@dataclass
class SandboxProcesses:
    """The processes of sandbox netns `netns`; PID namespaces seen are remembered across scans."""

    netns: str
    pidns: set[NsId] = field(default_factory=set)
    own_pidns: NsId | None = field(default_factory=lambda: ns_id("/proc/self/ns/pid"))

    def scan(self, rows: Rows | None = None) -> set[int]:
        """This sandbox's processes in `rows` (a pass over /proc; None: a pass of its own)."""
        target = ns_id(NETNS_RUN_DIR / self.netns)
        rows = _scan() if rows is None else rows
        if target is not None:
            for _, net, pidns in rows:
                if net == target and pidns is not None and pidns != self.own_pidns:
                    self.pidns.add(pidns)
        return {
            pid
            for pid, net, pidns in rows
            if (target is not None and net == target) or (pidns is not None and pidns in self.pidns)
        }

    def _belongs(self, pid: int) -> bool:
        target = ns_id(NETNS_RUN_DIR / self.netns)
        net, pidns = ns_id(f"/proc/{pid}/ns/net"), ns_id(f"/proc/{pid}/ns/pid")
        return (target is not None and net == target) or (pidns is not None and pidns in self.pidns)

    def pin(self, pids: list[int], sig: signal.Signals | None = None) -> list[int]:
        """pidfds of those of `pids` that are still this sandbox's (each signalled with `sig`, if given): the
        caller waits on them (a pidfd polls readable when its process exits) and closes them."""
        fds = []
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # gone
            try:
                if self._belongs(pid):  # the pidfd pins this process: it is the one we found, not a recycled PID
                    if sig is not None:
                        signal.pidfd_send_signal(fd, sig)
                    fds.append(fd)
                    continue
            except OSError:
                pass
            os.close(fd)
        return fds

    def signal(self, pids: list[int], sig: signal.Signals) -> None:
        for fd in self.pin(pids, sig):
            os.close(fd)


async def _exited(fds: list[int], timeout: float) -> None:
    """Wait until every pidfd in `fds` polls readable (its process exited) or `timeout` passes; closes them all.
    Event-driven: a drain of many sandboxes waits on their processes instead of scanning /proc every few ms."""
    loop = asyncio.get_running_loop()
    left = set(fds)
    done = loop.create_future()

    def ready(fd: int) -> None:
        loop.remove_reader(fd)
        left.discard(fd)
        if not left and not done.done():
            done.set_result(None)

    try:
        for fd in fds:
            loop.add_reader(fd, ready, fd)
        if left:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, timeout)
    finally:
        for fd in fds:
            if fd in left:
                loop.remove_reader(fd)
            os.close(fd)


async def stop_sandbox_processes(
    netns: str,
    extra: asyncio.subprocess.Process | None = None,
    grace: float = 3.0,
    kill_wait: float = 5.0,
    scans: SharedScan | None = None,
) -> None:
    """TERM every process of the sandbox, KILL whatever is left after `grace`, wait until every one is gone.

    The launcher (bwrap, outside the sandbox's PID namespace) exits on TERM; the sandbox's PID namespace ends with
    its init (the agent), which is signalled too (found by namespace). `extra` is the launcher this controller started
    (if it still knows it): it is signalled and awaited too. Raises DriverError when something survives SIGKILL.
    `scans`: passes over /proc shared with the other sandboxes stopping at the same time (a drain).
    """
    procs = SandboxProcesses(netns)

    async def remaining() -> set[int]:
        found = procs.scan(await scans.rows()) if scans is not None else await asyncio.to_thread(procs.scan)
        if extra is not None and extra.returncode is None:
            found.add(extra.pid)
        return found

    found = await remaining()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        if not found:
            return
        # pinned: the processes signalled; their exits are waited on (pidfds), then one pass checks what is left
        pinned = await asyncio.to_thread(procs.pin, sorted(found), sig)
        if extra is not None:
            signal_child(extra, sig)  # our unreaped child: its PID cannot have been recycled
        deadline = time.monotonic() + wait
        while True:
            await _exited(pinned, max(0.0, deadline - time.monotonic()))
            if extra is not None and extra.returncode is None:
                with contextlib.suppress(TimeoutError):  # reaped by asyncio: its returncode is set then
                    await asyncio.wait_for(extra.wait(), max(0.02, min(1.0, deadline - time.monotonic())))
            found = await remaining()
            if not found or time.monotonic() >= deadline:
                break
            # what is left was not signalled this round (it appeared since): wait on it too (not faster than 20 ms)
            pinned = await asyncio.to_thread(procs.pin, sorted(found))
            if not pinned:
                await asyncio.sleep(0.02)
    if not found:
        return
    raise DriverError(
        Hop.DRIVER,
        f"processes {sorted(found)} of sandbox {netns} survived SIGKILL for {kill_wait:.0f}s",
        "look for processes stuck in uninterruptible sleep (state D) and retry `hearth sandbox destroy`",
    )


# ---- by argv (VMMs) -----------------------------------------------------------------------------------------
def cmdline(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]] if raw else []


def is_zombie(pid: int) -> bool:
    """Exited (gone, zombie or dead): not running."""
    return _dead(pid)


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
