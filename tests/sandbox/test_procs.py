"""Stopping many sandboxes at once (a drain): the passes over /proc are shared, and never older than the question.

The pass itself is the real one (`procs._scan`), wrapped only to count the passes and when each began."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest

from hearth.fabric import netlink
from hearth.sandbox import procs
from hearth.sandbox.procs import Rows, SharedScan, pids_in_netns, stop_sandbox_processes
from tests import nsnames


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The start time of every pass over /proc made from now on."""
    starts: list[float] = []
    real = procs._scan

    def scan() -> Rows:
        starts.append(time.monotonic())
        return real()

    monkeypatch.setattr(procs, "_scan", scan)
    return starts


async def test_waiters_share_passes_that_began_after_they_asked(counted: list[float]) -> None:
    shared = SharedScan()

    async def ask() -> tuple[float, int]:
        asked = time.monotonic()
        rows = await shared.rows()
        return asked, id(rows)

    answers = await asyncio.gather(*(ask() for _ in range(50)))
    assert 1 <= len(counted) <= 2  # 50 waiters: the first pass, and one for all who asked after it began
    passes = {rows_id for _, rows_id in answers}
    assert len(passes) == len(counted)
    first_start = counted[0]
    assert all(asked <= first_start for asked, rows_id in answers if rows_id == answers[0][1])
    later = await ask()  # asked after both passes began: a new one
    assert len(counted) == len(passes) + 1 and later[0] <= counted[-1]


@pytest.fixture
def sleepers() -> Iterator[list[str]]:
    """Ten network namespaces (as sandboxes have), each with two processes in it."""
    names = [f"{nsnames.new()}-s{i}" for i in range(10)]
    kids: list[subprocess.Popen[bytes]] = []
    try:
        for name in names:
            netlink.create_netns(name)
            kids += [subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"]) for _ in range(2)]
        for name in names:
            while len(pids_in_netns(name)) < 2:  # `ip netns exec` has entered the namespace and exec'd sleep
                time.sleep(0.01)
        yield names
    finally:
        for kid in kids:
            kid.kill()
            kid.wait()
        for name in names:
            netlink.remove_netns(name)


@pytest.mark.netns
async def test_ten_sandboxes_stop_together_on_shared_passes(sleepers: list[str], counted: list[float]) -> None:
    shared = SharedScan()
    await asyncio.gather(*(stop_sandbox_processes(name, scans=shared) for name in sleepers))
    assert all(pids_in_netns(name) == [] for name in sleepers)
    rounds = len(counted)
    counted.clear()
    await stop_sandbox_processes(sleepers[0])  # already stopped: one pass of its own, nothing to signal
    assert len(counted) == 1
    assert rounds < 2 * len(sleepers)  # alone, each would have made at least two passes (find, then confirm)


async def test_liveness_questions_one_after_another_share_a_recent_pass(counted: list[float]) -> None:
    """The watchdog asks about each sandbox in turn: with max_age, one pass answers a tick's questions."""
    shared = SharedScan()
    for _ in range(20):
        assert pids_in_netns("hearth-tnone-s0", await shared.rows(max_age=3600)) == []
    assert len(counted) == 1
    await shared.rows()  # without max_age: a pass begun after the question
    assert len(counted) == 2


@pytest.fixture
def stubborn() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A network namespace with one process in it that ignores TERM."""
    name = f"{nsnames.new()}-s0"
    netlink.create_netns(name)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(600)"
    kid = subprocess.Popen(["ip", "netns", "exec", name, "python3", "-c", code], stdout=subprocess.PIPE)
    try:
        assert kid.stdout is not None and kid.stdout.readline() == b"\n"  # TERM is ignored from now on
        yield name, kid
    finally:
        kid.kill()
        kid.wait()
        netlink.remove_netns(name)


@pytest.mark.netns
async def test_a_stop_waits_on_pidfds_not_on_passes(
    stubborn: tuple[str, subprocess.Popen[bytes]], counted: list[float]
) -> None:
    """A process that ignores TERM holds its sandbox for the whole grace: the stop waits on its pidfd (one pass to
    find it, one after the grace, one after KILL), not on a pass every few milliseconds."""
    name, kid = stubborn
    await stop_sandbox_processes(name, grace=0.5, kill_wait=5.0)
    assert pids_in_netns(name) == []
    assert await asyncio.to_thread(kid.wait, 5) == -9  # it took the KILL
    assert len(counted) <= 4  # polled every 20 ms, the grace alone made 25
