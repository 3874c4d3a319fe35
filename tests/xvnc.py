"""A real Xvnc (TigerVNC) on a loopback port for tests that need the VNC server itself but no sandbox: started
with the flags the agent uses (hearth_agent/supervisor.py), stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Iterator

from hearth.serving.local import free_port

READY = 15.0


@contextlib.contextmanager
def local_xvnc(width: int = 800, height: int = 600) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Xvnc listening on 127.0.0.1:<port> (security None, shared, resizable); yields (port, process)."""
    port = free_port()
    r, w = os.pipe()
    argv = ["Xvnc", "-geometry", f"{width}x{height}", "-depth", "24", "-rfbport", str(port), "-interface", "127.0.0.1"]
    argv += ["-SecurityTypes", "None", "-AlwaysShared", "-AcceptSetDesktopSize", "-nolisten", "tcp"]
    proc = subprocess.Popen(
        [*argv, "-displayfd", str(w)], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.close(w)
    try:
        data, deadline = b"", time.monotonic() + READY
        while not data.endswith(b"\n") and time.monotonic() < deadline:
            if select.select([r], [], [], 0.1)[0]:
                chunk = os.read(r, 64)
                if not chunk:
                    break
                data += chunk
        assert data.strip().isdigit(), f"Xvnc reported no display (exit {proc.poll()})"
        yield port, proc
    finally:
        os.close(r)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
