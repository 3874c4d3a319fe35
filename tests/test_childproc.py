"""Signalling a child that has just exited must not reap it behind asyncio's child watcher: Popen.send_signal()
polls (waitpid) first, and asyncio then reports exit status 255 and logs "Unknown child process"."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

import pytest

from hearth.childproc import kill_and_reap, signal_child

Signal = Callable[[asyncio.subprocess.Process, int], None]


def _exited(pid: int) -> bool:
    """A zombie, or already reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


async def _races(send: Signal, rounds: int) -> list[int | None]:
    """Kill a child, then — while it is a zombie the watcher has not collected yet — signal it again."""
    codes: list[int | None] = []
    for _ in range(rounds):
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        os.kill(proc.pid, signal.SIGKILL)
        while not _exited(proc.pid):
            pass  # holding the GIL: the watcher thread can hardly reap it before we signal
        send(proc, signal.SIGTERM)
        codes.append(await asyncio.wait_for(proc.wait(), 10))
    return codes


async def test_signal_child_never_reaps_behind_the_watcher(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    assert await _races(signal_child, 20) == [-signal.SIGKILL] * 20
    assert "Unknown child process" not in caplog.text


async def test_the_race_is_real_with_send_signal(caplog: pytest.LogCaptureFixture) -> None:
    """Control: the same race through Popen.send_signal loses the exit status (why hearth.childproc exists)."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    codes: list[int | None] = []
    for _ in range(10):  # the race is won in nearly every round here; allow for a slow, loaded machine
        codes += await _races(lambda p, s: p.send_signal(s), 20)
        if 255 in codes:
            break
    assert 255 in codes, codes


async def test_kill_and_reap_returns_the_real_status() -> None:
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    assert await kill_and_reap(proc, 10) is True
    assert proc.returncode == -signal.SIGKILL
    signal_child(proc)  # an exited child: nothing happens
