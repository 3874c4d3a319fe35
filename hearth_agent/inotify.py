"""Waiting for files to be written in a few directories (Linux inotify through ctypes; stdlib only): `wait()` blocks
until something was written or moved into one of them, or until `close()` — no polling."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select

IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x8, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000


class Watch:
    def __init__(self, dirs: list[str]) -> None:
        """OSError when inotify is unavailable (the caller then compares the files at the end only)."""
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe()
        watched = 0
        for d in dirs:
            if libc.inotify_add_watch(fd, os.fsencode(d), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) >= 0:
                watched += 1
        if not watched:
            self.close()
            raise OSError("no directory to watch")

    def wait(self) -> bool:
        """True when something was written (all pending events drained); False once closed."""
        try:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
        except (OSError, ValueError):
            return False
        if self._stop_r in ready:
            return False
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._fd, 65536):
                pass
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def __del__(self) -> None:
        for fd in (getattr(self, "_fd", -1), getattr(self, "_stop_r", -1), getattr(self, "_stop_w", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
