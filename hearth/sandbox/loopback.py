"""The loopback driver, for tests: the REAL agent (`python -m hearth_agent`) as a plain child process of the
controller, bound to its slot's address on the loopback interface — no namespaces, no fabric, no root.

It sits beside the real drivers the way httpx's test transports sit beside its real ones: the session, pool,
sign-in, prompt and reconciler logic above it runs unchanged, unprivileged, in seconds.

What it offers, and what not (decided for issue 22):
- sandboxes without a desktop only: direct-mode sign-ins, CLI sandboxes (persistent home), prompts. A desktop
  (`spec.desktop`) is refused: the guest's Xvnc, X socket and Chromium profile live in places (`/tmp/.X11-unix`, the
  abstract socket namespace, display numbers) that sandboxes sharing one host namespace would fight over; the netns
  driver covers desktops.
- no isolation at all: the agent runs as the controller's user, with the controller's filesystem. So the settings
  refuse `HEARTH_DRIVER=loopback` unless `HEARTH_ALLOW_UNISOLATED=1` is set too (hearth/config/check.py), and it is never
  chosen by `HEARTH_DRIVER=auto`.
- addresses: `INTERNAL_NETWORK` must be a loopback range (e.g. 127.100.0.0/22). Every 127/8 address is the
  loopback interface on Linux, so each slot's agent binds its own address (`slot.ip`, port 8080 as everywhere) and
  the controller's callback listener binds `BRIDGE_IP`, all in the controller's own namespace
  (`Settings.dial_netns` is None): no fabric namespace is created.

A sandbox's processes are found by the agent's argv (`-X hearth-loopback=<workdir>`, a Python option the agent
ignores) and its process session (the agent starts one), so `destroy` needs nothing but the spec — also after a
controller restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from hearth.config import Settings
from hearth.errors import DriverError, Hop
from hearth.guest import configdrive
from hearth.guest import packages as guestpkg
from hearth.sandbox import listening, steps
from hearth.sandbox.base import Offers, SandboxInfo, SandboxSpec, StageMark
from hearth.sandbox.procs import cmdline, is_zombie
from hearth.sandbox.steps import Check, Step
from hearth.sandbox.workdir import remove_workdir

__all__ = ["LoopbackDriver"]

log = logging.getLogger("hearth.sandbox.loopback")
MARK = "hearth-loopback="  # `python -X hearth-loopback=<workdir>`: names the sandbox in the agent's argv
AGENT_LISTEN_TIMEOUT = 20.0


def _marker(spec: SandboxSpec) -> str:
    return MARK + str(spec.workdir)


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def sandbox_pids(spec: SandboxSpec) -> set[int]:
    """The live processes of `spec`'s sandbox: its agent (by argv), whatever runs in the agent's process session,
    and every descendant of either."""
    mark = _marker(spec)
    return _pids(lambda argv: mark in argv)


def pids_under(data_dir: Path) -> set[int]:
    """The live processes of every loopback sandbox of the controller whose data dir is `data_dir` (test teardown)."""
    prefix = MARK + str(data_dir) + os.sep
    return _pids(lambda argv: any(a.startswith(prefix) for a in argv))


def _pids(is_agent: Callable[[list[str]], bool]) -> set[int]:
    parent: dict[int, int] = {}
    session: dict[int, int] = {}
    agents: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat_fields(pid)
        if fields is None or fields[0] in (b"Z", b"X"):
            continue
        parent[pid], session[pid] = int(fields[1]), int(fields[3])
        argv = cmdline(pid)
        if argv and "hearth_agent" in argv and is_agent(argv):
            agents.add(pid)
    found = agents | {p for p, sid in session.items() if sid in agents}
    frontier = set(found)
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _signal(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # gone
        try:
            signal.pidfd_send_signal(fd, sig)
        except OSError:
            pass
        finally:
            os.close(fd)


class LoopbackDriver:
    """A `hearth.sandbox.base.Driver` (satisfied, not inherited, as the other drivers do)."""

    name: ClassVar[str] = "loopback"
    offers: ClassVar[Offers] = Offers(persistent_home=True, ports=(), guest_netns=False, controller_agent=True)

    def __init__(self, settings: Settings, python: str = sys.executable) -> None:
        self.s = settings
        self.python = python
        self._procs: dict[Path, asyncio.subprocess.Process] = {}
        self._guest: Path | None = None

    def console_tail(self, spec: SandboxSpec, limit: int = 8192) -> str:
        raise DriverError(Hop.DRIVER, "the loopback driver has no guest console", "ask `offers.console_tail` first")

    def log_path(self, spec: SandboxSpec) -> Path:
        return spec.workdir / "logs" / "agent.log"

    def home_dir(self, spec: SandboxSpec) -> Path:
        return spec.home or spec.workdir / "home"

    def agent_config(self, spec: SandboxSpec) -> dict[str, object]:
        """The document every driver gives its agent, plus the loopback address it binds."""
        return configdrive.document(spec, self.s.callback_port) | {"ip": str(spec.slot.ip), "nameservers": []}

    def argv(self, spec: SandboxSpec, guest: Path, config_fd: int, notify_fd: int) -> list[str]:
        return [
            self.python, "-P", "-S", "-X", _marker(spec), "-m", "hearth_agent",
            "--config", f"/dev/fd/{config_fd}", "--notify-fd", str(notify_fd),
        ]  # fmt: skip

    def env(self, spec: SandboxSpec, guest: Path) -> dict[str, str]:
        """Built from scratch, as the netns driver's: the controller's secrets never reach the agent."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.home_dir(spec)),
            "USER": "hearth",
            "LOGNAME": "hearth",
            "PYTHONPATH": str(guest),
            "PYTHONDONTWRITEBYTECODE": "1",
            "BROWSER": str(guest / "hearth_agent" / "browser_hook.py"),
        }

    # ---- start ----------------------------------------------------------------------------------
    def checks(self, spec: SandboxSpec) -> list[Check]:
        return [Check("no desktop", lambda: _no_desktop(spec))]

    def steps(self, spec: SandboxSpec, boot: _Boot) -> list[Step]:
        """The start as named steps (hearth/sandbox/steps.py). "namespace" makes nothing here: it is kept so every
        driver reports the same boot stages."""
        return [
            Step("reclaim", lambda: self._reclaim(spec)),
            Step("namespace", _nothing, stage=True),
            Step("workdir", lambda: boot.set_guest(asyncio.to_thread(self._prepare, spec)), self._undo_workdir(spec)),
            Step("process", lambda: self._boot(spec, boot), lambda: self.destroy(spec), stage=True, partial=True),
        ]

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        boot = _Boot()
        what, hint = f"loopback sandbox {spec.slot.ip}", f"see {self.log_path(spec)}"
        await steps.run(self.steps(spec, boot), mark, what=what, hint=hint, checks=self.checks(spec))
        assert boot.proc is not None  # the "process" step made it
        details = {"ip": str(spec.slot.ip), "workdir": str(spec.workdir), "log": str(self.log_path(spec))}
        return SandboxInfo(pid=boot.proc.pid, details=details)

    async def _reclaim(self, spec: SandboxSpec) -> None:
        if await asyncio.to_thread(sandbox_pids, spec):
            log.warning("replacing leftovers of this slot", extra={"workdir": str(spec.workdir)})
            await self.destroy(spec)

    def _undo_workdir(self, spec: SandboxSpec) -> Callable[[], Awaitable[None]]:
        return lambda: asyncio.to_thread(remove_workdir, spec.workdir)

    async def _boot(self, spec: SandboxSpec, boot: _Boot) -> None:
        assert boot.guest is not None  # the "workdir" step installed it
        boot.proc, notices = await self._launch(spec, boot.guest)
        await self._wait_agent(spec, boot.proc, notices)

    def _prepare(self, spec: SandboxSpec) -> Path:
        if self._guest is None or not self._guest.is_dir():
            pkgs = guestpkg.packages(for_tests=bool(self.s.example_issuer))
            self._guest = guestpkg.install(self.s.data_dir / "guest", pkgs)
        wd = spec.workdir
        if not wd.is_absolute() or wd in (Path("/"), self.s.data_dir):
            raise DriverError(Hop.DRIVER, f"refusing work directory {wd}", "derive it from the slot")
        wd.mkdir(mode=0o700, parents=True, exist_ok=True)
        (wd / "logs").mkdir(mode=0o700, exist_ok=True)
        self.home_dir(spec).mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._guest

    async def _launch(self, spec: SandboxSpec, guest: Path) -> tuple[asyncio.subprocess.Process, int]:
        config = json.dumps(self.agent_config(spec)).encode()  # far below a pipe's capacity: the write cannot block
        fd = os.open(self.log_path(spec), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        r, w = os.pipe()
        notices, notify = os.pipe2(os.O_CLOEXEC)
        try:
            os.write(w, config)
            os.close(w)
            w = -1
            proc = await asyncio.create_subprocess_exec(
                *self.argv(spec, guest, r, notify),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=self.env(spec, guest),
                cwd=str(self.home_dir(spec)),
                pass_fds=(r, notify),
            )
        except BaseException:
            os.close(notices)
            raise
        finally:
            os.close(fd)
            os.close(r)
            os.close(notify)  # the agent holds the only write end: its exit is EOF here
            if w >= 0:
                os.close(w)
        self._procs[spec.workdir] = proc
        log.info("sandbox launched", extra={"ip": str(spec.slot.ip), "pid": proc.pid})
        return proc, notices

    async def _wait_agent(self, spec: SandboxSpec, proc: asyncio.subprocess.Process, notices: int) -> None:
        timeout = min(self.s.ready_timeout, AGENT_LISTEN_TIMEOUT)
        path = self.log_path(spec)
        await listening.wait_agent(
            None, str(spec.slot.ip), spec.agent_port, proc, notices, timeout, path, f"see {path}"
        )

    # ---- stop -----------------------------------------------------------------------------------
    async def destroy(self, spec: SandboxSpec, grace: float = 3.0, kill_wait: float = 5.0) -> None:
        """TERM the sandbox's processes, KILL what is left after `grace`, remove its work directory. Idempotent."""
        proc = self._procs.pop(spec.workdir, None)
        found = await asyncio.to_thread(sandbox_pids, spec)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
            if not found:
                break
            await asyncio.to_thread(_signal, found, sig)
            deadline = time.monotonic() + wait
            while found and time.monotonic() < deadline:
                if proc is not None and proc.returncode is None:
                    try:
                        await asyncio.wait_for(proc.wait(), 0.02)
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0.02)
                found = {p for p in found if not is_zombie(p)} | await asyncio.to_thread(sandbox_pids, spec)
        if found:
            raise DriverError(
                Hop.DRIVER,
                f"processes {sorted(found)} of loopback sandbox {spec.slot.ip} survived SIGKILL",
                "look for processes stuck in uninterruptible sleep (state D)",
            )
        if proc is not None and proc.returncode is None:
            await proc.wait()
        await asyncio.to_thread(remove_workdir, spec.workdir)

    async def alive(self, spec: SandboxSpec) -> bool:
        proc = self._procs.get(spec.workdir)
        if proc is not None:
            return proc.returncode is None
        return bool(await asyncio.to_thread(sandbox_pids, spec))


class _Boot:
    """What the steps of one start hand on to each other."""

    def __init__(self) -> None:
        self.guest: Path | None = None
        self.proc: asyncio.subprocess.Process | None = None

    async def set_guest(self, made: Awaitable[Path]) -> None:
        self.guest = await made


async def _nothing() -> None:
    return None


def _no_desktop(spec: SandboxSpec) -> None:
    if spec.desktop:
        raise DriverError(
            Hop.DRIVER,
            "the loopback driver runs sandboxes without a desktop only (direct sign-in, CLI sandboxes)",
            "use the netns driver for desktops (HEARTH_DRIVER=netns)",
        )
