"""How a started desktop service shows it is ready, and how a child is waited for: an X server's display number on
-displayfd, an RFB port that accepts, a window on the display. Each wait ends early when the agent stops; none ticks
(the displayfd read sleeps on the pipe and the supervisor's waker; only the port check retries a connect).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time

from hearth_agent.pathfind import which
from hearth_agent.wakeup import Waker, wait_readable

READY_TIMEOUT = 15.0  # display number (-displayfd) / RFB port
_WINDOW = re.compile(rb"0x[0-9a-f]+")  # a window id in `xprop -root _NET_CLIENT_LIST`


def read_display(r: int, proc: subprocess.Popen[bytes], name: str, stop: threading.Event, waker: Waker) -> str:
    """The display (":N") an X server wrote to the read end `r` of its -displayfd pipe (closed here);
    RuntimeError when it exits or stays silent for READY_TIMEOUT."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    try:  # read up to the newline: closing early makes the server's write fail ("Cannot write display")
        while not data.endswith(b"\n") and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready = wait_readable([r, waker.fileno()], left)
            waker.drain()  # a stop is checked above; anything else, the run loop re-reads after this
            if r in ready:
                chunk = os.read(r, 64)
                if not chunk:  # the server exited (its end of the pipe closed)
                    break
                data += chunk
    finally:
        os.close(r)
    number = data.strip().decode(errors="replace")
    if not number.isdigit():
        code = proc.poll()
        why = f"exited with {code}" if code is not None else f"reported no display within {READY_TIMEOUT:.0f}s"
        raise RuntimeError(f"{name} {why}")
    return ":" + number


def wait_port(proc: subprocess.Popen[bytes], name: str, ip: str, port: int, stop: threading.Event) -> None:
    """Until `ip:port` accepts (RuntimeError when `proc` exits first or READY_TIMEOUT passes)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError:
            stop.wait(0.02)
    raise RuntimeError(f"{name} did not listen on {ip}:{port} within {READY_TIMEOUT:.0f}s")


def window_listed(display: str) -> bool | None:
    """Whether the window manager lists a client window on `display`; None when this cannot be told here (no
    xprop in this userspace, no display)."""
    xprop = which("xprop")
    if xprop is None or not display:
        return None
    try:
        out = subprocess.run(
            [xprop, "-display", display, "-root", "_NET_CLIENT_LIST"], capture_output=True, timeout=2
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(_WINDOW.search(out))


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for `proc` up to `timeout`; True when it has exited."""
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
