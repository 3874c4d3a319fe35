"""An agent that sleeps: the event sources (hearth_agent/wakeup.py) on real pipes, processes and directories, and
the real agent process (`python -m hearth_agent`, no desktop: a direct-mode sign-in sandbox) idle behind a CLI that
waits for the person's code — its threads must not wake while nothing happens.

Idleness is counted, not timed: the voluntary context switches of every agent thread (/proc/<pid>/task/*/status)
over a few seconds. The ticking agent (supervisor 10/s, sign-in watcher 10/s, PTY select 5/s, HTTP poll 5/s) made
about 30 a second; a sleeping one makes none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth_agent.config import parse_config
from hearth_agent.supervisor import BROWSER_UNASKED, Supervisor
from hearth_agent.wakeup import Inotify, Waker, pidfd, wait_readable
from tests.hearth_agent.test_agent import free_port
from tests.hearth_agent.test_signin import (  # noqa: F401  (controller: a fixture used by name)
    REPO,
    SECRET,
    SESSION,
    Agent,
    Controller,
    controller,
    fake_provider,
)
from tests.waits import eventually_sync

WINDOW = 3.0  # seconds of idleness counted
OLD_RATE = 30  # wakeups per second of the ticking agent


def test_waker_wakes_a_blocked_wait_and_drains() -> None:
    waker = Waker()
    try:
        assert wait_readable([waker.fileno()], 0) == []
        for _ in range(100_000):  # more than a pipe holds: a full pipe is already awake, never an error
            waker.wake()
        assert wait_readable([waker.fileno()], None) == [waker.fileno()]
        waker.drain()
        assert wait_readable([waker.fileno()], 0) == []
    finally:
        waker.close()
    waker.wake()  # after close: nothing (no write to a reused descriptor)


def test_pidfd_is_readable_when_the_child_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    fd = pidfd(proc.pid)
    assert fd is not None
    try:
        assert wait_readable([fd], 0) == []
        assert proc.stdin is not None
        proc.stdin.close()
        assert wait_readable([fd], 30) == [fd]
        assert proc.wait(5) == 0
    finally:
        os.close(fd)


def test_inotify_sees_a_file_appear_in_directories_made_later(tmp_path: Path) -> None:
    events = Inotify.open()
    assert events is not None
    try:
        events.watch_towards(str(tmp_path), ".tool/sub/creds.json")
        assert wait_readable([events.fileno()], 0) == []
        (tmp_path / ".tool").mkdir()
        assert wait_readable([events.fileno()], 10) == [events.fileno()] and events.drain()
        assert not events.drain()
        events.watch_towards(str(tmp_path), ".tool/sub/creds.json")  # the new directory is watched now
        (tmp_path / ".tool" / "sub").mkdir()
        assert wait_readable([events.fileno()], 10) and events.drain()
        events.watch_towards(str(tmp_path), ".tool/sub/creds.json")
        (tmp_path / ".tool" / "sub" / "creds.json").write_text("{}")
        assert wait_readable([events.fileno()], 10) and events.drain()
        (tmp_path / "elsewhere").mkdir()  # a sibling directory's content is not watched
        events.drain()
        (tmp_path / "elsewhere" / "f").write_text("x")
        assert wait_readable([events.fileno()], 0) == []
    finally:
        events.close()


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` so far (each is a sleep that was woken)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread that ended
    return total


def quiet(pid: int, timeout: float = 20.0) -> int:
    """Wait until `pid` has settled (at most one wakeup in a second: start-up output and pushes are over), or
    `timeout` (a ticking agent never settles: the window that follows then counts its ticks)."""
    deadline = time.monotonic() + timeout
    before = wakeups(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = wakeups(pid)
        if now - before <= 1:
            return now
        before = now
    return before


WAITS_FOR_CODE = r"""
import json, os
print("visit: https://auth.test/authorize?state=abc", flush=True)
code = input("Paste code here > ")
os.makedirs(os.path.expanduser("~/.fake"), exist_ok=True)
with open(os.path.expanduser("~/.fake/creds.json"), "w") as f:
    json.dump({"token": code}, f)
"""


@pytest.fixture
def agent_process(tmp_path: Path, controller: Controller) -> Iterator[tuple[Agent, subprocess.Popen[bytes]]]:  # noqa: F811
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    port = free_port()
    cfg = {"ip": "127.0.0.1", "agent_port": port, "secret": SECRET, "session_id": SESSION}
    cfg |= {"callback": controller.url, "desktop": False}
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(cfg))
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": str(REPO),
        "BROWSER": str(REPO / "hearth_agent/browser_hook.py"),
    }
    proc = subprocess.Popen([sys.executable, "-m", "hearth_agent", "--config", str(path)], env=env, cwd=str(home))
    agent = Agent(f"http://127.0.0.1:{port}", home, None, None, controller)  # type: ignore[arg-type]
    try:
        eventually_sync(lambda: _answers(agent), 30, "the agent listening")
        yield agent, proc
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(agent: Agent) -> bool:
    try:
        return agent.call("GET", "/health")[0] == 200
    except OSError:
        return False


def test_an_idle_agent_waiting_for_a_code_does_not_wake(agent_process: tuple[Agent, subprocess.Popen[bytes]]) -> None:
    agent, proc = agent_process
    ctl = agent.controller
    prov = fake_provider(WAITS_FOR_CODE, timeout=600, flow="paste_code", code_prompt="Paste code here >")
    assert agent.call("POST", "/v1/login", {"provider": prov})[0] == 202
    eventually_sync(lambda: any(s["awaiting_code"] for s in ctl.signin), 30, "the code prompt pushed")
    before = quiet(proc.pid)
    time.sleep(WINDOW)  # the measurement window itself (nothing is waited for)
    idle = wakeups(proc.pid) - before
    assert idle <= 2, f"{idle} wakeups in {WINDOW:g} s idle (the ticking agent: ~{OLD_RATE * WINDOW:.0f})"
    # the same agent does wake for what matters: the code typed, the CLI writing its credentials (inotify), exiting
    assert agent.call("POST", "/v1/login/code", {"code": "good"}) == (200, {"sent": True})
    assert agent.finished()["state"] == "captured"
    eventually_sync(lambda: bool(ctl.credentials), 30, "credentials push")
    assert wakeups(proc.pid) > before + idle


@pytest.fixture
def desktop_agent(tmp_path: Path) -> Iterator[tuple[Agent, subprocess.Popen[bytes]]]:
    """The real agent with a real desktop (Xvnc + Openbox on loopback, no Chromium)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    port = free_port()
    cfg = {"ip": "127.0.0.1", "agent_port": port, "rfb_port": free_port(), "secret": SECRET, "chromium": False}
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "hearth_agent", "--config", str(path)], env=env, cwd=str(home))
    agent = Agent(f"http://127.0.0.1:{port}", home, None, None, Controller())  # type: ignore[arg-type]
    try:
        eventually_sync(lambda: _answers(agent), 30, "the agent listening")
        yield agent, proc
    finally:
        proc.terminate()
        proc.wait(30)


def _services(agent: Agent) -> dict[str, Any]:
    code, body = agent.call("GET", "/health")
    assert code == 200
    services: dict[str, Any] = body["services"]
    return services


@pytest.mark.skipif(shutil.which("Xvnc") is None or shutil.which("openbox") is None, reason="needs Xvnc and Openbox")
def test_a_supervisor_with_a_desktop_sleeps_and_wakes_when_a_service_dies(
    desktop_agent: tuple[Agent, subprocess.Popen[bytes]],
) -> None:
    agent, proc = desktop_agent
    eventually_sync(lambda: all(s["state"] == "running" for s in _services(agent).values()), 30, "desktop running")
    before = quiet(proc.pid)
    time.sleep(WINDOW)  # the measurement window itself
    idle = wakeups(proc.pid) - before
    assert idle <= 2, f"{idle} wakeups in {WINDOW:g} s idle (the ticking supervisor alone: ~{10 * WINDOW:.0f})"
    openbox = _services(agent)["openbox"]["pid"]
    os.kill(openbox, signal.SIGKILL)  # its exit (pidfd) wakes the supervisor, which restarts it after its back-off
    eventually_sync(lambda: _services(agent)["openbox"]["restarts"] == 1, 30, "openbox restarted")
    assert _services(agent)["openbox"]["state"] in ("starting", "running")


def test_the_supervisor_sleeps_until_its_next_deadline_only() -> None:
    """`_next_due` (the supervisor's sleep when no child exits and nothing wakes it): nothing due with everything
    running and the browser asked for; the unasked browser's deadline; a failed service's back-off; services
    waiting for a display that is down count only through the display's own restart."""
    cfg = parse_config({"ip": "127.0.0.1", "agent_port": free_port(), "secret": SECRET, "browser_on_request": True})
    sup = Supervisor(cfg)
    try:
        now = sup.t0
        for svc in sup.services.values():
            if svc.name != "chromium":
                svc.state, svc.proc = "running", object()  # type: ignore[assignment]
        due = sup._next_due(now)
        assert due is not None and abs(due - BROWSER_UNASKED) < 1e-6  # the waiting browser starts unasked then
        sup.want_browser()
        sup.services["chromium"].state, sup.services["chromium"].proc = "running", object()  # type: ignore[assignment]
        assert sup._next_due(now) is None  # all running: only an event wakes it
        openbox = sup.services["openbox"]
        openbox.state, openbox.proc, openbox.next_try = "failed", None, now + 0.5
        assert sup._next_due(now) == pytest.approx(0.5)  # its back-off
        display = sup.services["xvnc"]
        display.state, display.proc, display.next_try = "failed", None, now + 2.0
        openbox.next_try = now - 1.0  # overdue, but it waits for the display
        assert sup._next_due(now) == pytest.approx(2.0)
    finally:
        sup._waker.close()
