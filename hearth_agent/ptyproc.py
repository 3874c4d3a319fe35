"""A CLI in a pseudo-terminal.

`PtyProcess` runs a command with a PTY as its stdin/stdout/stderr, in a new session whose controlling terminal is
that PTY (some CLIs open /dev/tty), reads its output on a thread and can end its whole process group. What its
output means — the rendered screen, its hyperlinks, the answers to its terminal queries — is
hearth_agent/loginscreen.py and hearth_agent/screen.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable

from hearth_agent.wakeup import Waker, pidfd

# The child's first act: make the PTY (its stdin) the controlling terminal of its new session, then exec the CLI.
# (subprocess's start_new_session gives the session; Python 3.11 has no safe way to acquire the terminal before
# exec without preexec_fn, which is unsafe in a threaded server.)
_CTTY = (
    "import fcntl,os,sys,termios\n"
    "try:\n fcntl.ioctl(0, termios.TIOCSCTTY, 0)\nexcept OSError:\n pass\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


class PtyProcess:
    """`argv` in a PTY; `on_output(bytes)` is called from the reader thread for every read."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        on_output: Callable[[bytes], None],
        cols: int = 1000,  # wide: CLIs that wrap to the terminal width must not break the sign-in URL
        rows: int = 50,
    ) -> None:
        self.argv, self.env, self.cwd, self.on_output = argv, env, cwd, on_output
        self.cols, self.rows = cols, rows
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._master = -1
        self._wlock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._closing = threading.Event()
        self._stop_reading = Waker()  # `close` wakes the reader: it blocks on the PTY with no timeout
        self._exit_fd: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        master, slave = pty.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.rows, self.cols, 0, 0))
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _CTTY, *self.argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # only the child holds the slave: its exit makes the master read EIO
        os.set_blocking(master, False)  # a CLI that stops reading must not block our writes (or the reader)
        self._master = master
        self._reader = threading.Thread(target=self._read_loop, name="login-pty", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        while not self._closing.is_set():
            try:
                ready, _, _ = select.select([self._master, self._stop_reading.fileno()], [], [])
                if self._master not in ready:
                    continue
                data = os.read(self._master, 65536)
            except BlockingIOError:
                continue
            except OSError:  # EIO: every holder of the slave side is gone
                break
            if not data:
                break
            self.on_output(data)

    def write(self, text: str) -> bool:
        """Type `text`; False when the CLI is gone or has not read its input for a second (the rest is dropped)."""
        data = text.encode()
        deadline = time.monotonic() + 1.0
        with self._wlock:
            while data and self._master >= 0:
                try:
                    data = data[os.write(self._master, data) :]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
                except OSError:
                    break
        return not data

    def output_closed(self, timeout: float) -> bool:
        """Wait until the reader saw the end of the output (all of it was passed to `on_output`)."""
        if self._reader is not None:
            self._reader.join(timeout)
            return not self._reader.is_alive()
        return True

    def exit_fd(self) -> int | None:
        """A descriptor readable once the CLI has exited (a pidfd; None where the kernel has none): to wait on."""
        if self._exit_fd is None and self.proc is not None and self.returncode is None:
            self._exit_fd = pidfd(self.proc.pid)
        return self._exit_fd

    def exited(self) -> int | None:
        """The exit status if the CLI has exited, without reaping it (so its pid cannot be reused yet)."""
        if self.returncode is not None:
            return self.returncode
        try:
            res = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.reap()
        if res is None:
            return None
        return res.si_status if res.si_code == os.CLD_EXITED else -res.si_status

    def reap(self) -> int:
        """After the CLI exited: kill what is left of its process group (helpers it started), then reap it."""
        assert self.proc is not None
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the leader is a zombie: its pid is still ours
            self.returncode = self.proc.wait()
        return self.returncode

    def terminate(self, grace: float = 2.0) -> int:
        """SIGTERM the process group, SIGKILL it after `grace`, reap. Returns the exit status."""
        if self.proc is None:
            return -1
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.exited() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + wait
            while self.exited() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        return self.reap()

    def close(self) -> None:
        """Stop reading and release the PTY (call after the CLI was reaped)."""
        self._closing.set()
        self._stop_reading.wake()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2)
        with self._wlock:
            if self._master >= 0:
                os.close(self._master)
                self._master = -1
        if self._reader is None or not self._reader.is_alive():
            self._stop_reading.close()
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None
