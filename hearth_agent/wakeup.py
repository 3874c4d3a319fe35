"""What the agent's threads wait on instead of ticking: a `Waker` (a pipe another thread, or a signal handler, writes
to), a child's exit (`pidfd`), and changes under directories (`Inotify`, through ctypes: the agent runs on the
standard library alone). Each is a file descriptor for `select`: an idle agent makes no periodic wakeups at all.

Where the kernel lacks one (no pidfd before Linux 5.3, no inotify), the caller falls back to polling.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x002, 0x004, 0x008
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF = 0x040, 0x080, 0x100, 0x200, 0x400
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
CHANGES = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF


class Waker:
    """A pipe whose read end becomes readable when `wake` is called (from any thread or a signal handler)."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.RLock()  # reentrant: a signal handler may interrupt its own thread holding it

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        with self._lock:
            if self._w < 0:
                return
            with contextlib.suppress(BlockingIOError):  # a full pipe is already awake
                os.write(self._w, b"\0")

    def drain(self) -> None:
        with self._lock:
            if self._r < 0:
                return
            with contextlib.suppress(BlockingIOError):
                while os.read(self._r, 4096):
                    pass

    def close(self) -> None:
        with self._lock:
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1


def pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` (our child, not reaped yet) exits; None where unsupported."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    os.set_inheritable(fd, False)
    return fd


class Inotify:
    """Directory watches: readable when something in a watched directory changed. `Inotify.open()` is None where
    the kernel (or libc) has no inotify."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self._fd, self._libc = fd, libc
        self._watched: set[str] = set()

    @classmethod
    def open(cls) -> Inotify | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc, no ldconfig run
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return None if fd < 0 else cls(fd, libc)

    def fileno(self) -> int:
        return self._fd

    def watch(self, directory: str) -> bool:
        """Watch `directory` (again: idempotent); False when it does not exist (yet) or cannot be watched."""
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), CHANGES)
        if wd < 0:
            self._watched.discard(directory)
            return False
        self._watched.add(directory)
        return True

    def watch_towards(self, root: str, relative: str) -> None:
        """Watch `root` and every existing directory on the way to `relative`'s parent (a file not written yet:
        the directories that will hold it are watched as they appear — call again after each change)."""
        directory = root
        self.watch(directory)
        for part in os.path.dirname(relative).split("/"):
            if not part:
                continue
            directory = os.path.join(directory, part)
            if not self.watch(directory):
                return

    def drain(self) -> bool:
        """Consume the pending events; whether there were any."""
        got = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                got = True
        return got

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """Block until one of `fds` is readable or `timeout` seconds (None: no timeout) passed."""
    try:
        ready, _, _ = select.select(fds, [], [], timeout)
    except (OSError, ValueError):  # a descriptor closed under us: the caller re-checks its state
        return []
    return ready
