"""The namespace driver: a browser desktop in its own network namespace, unprivileged, under bubblewrap.

Per sandbox: netns `<fabric>-s<slot>`, a veth whose outer end is an isolated port of the fabric bridge, the leased
address with a default route via BRIDGE_IP; inside, the guest agent (which starts and supervises Xvfb, Openbox,
x11vnc and Chromium) runs as an unprivileged user with a private /tmp and HOME. Everything derives from the slot,
so `destroy` needs nothing but the spec — also after a controller crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import hearth_agent
import hearth_example
from hearth.config import Settings
from hearth.errors import DriverError, HearthError, Hop
from hearth.fabric import netlink, ports
from hearth.fabric.dial import NETNS_RUN_DIR, socket_in_netns
from hearth.sandbox.base import Driver, SandboxInfo, SandboxSpec, StageMark

log = logging.getLogger("hearth.sandbox.netns")
GUEST_HOME = "/home/hearth"


def pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is `name` (compared by inode; no `ip` text parsing)."""
    try:
        target = os.stat(NETNS_RUN_DIR / name)
    except FileNotFoundError:
        return []
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if st.st_ino == target.st_ino and st.st_dev == target.st_dev:
            out.append(int(entry.name))
    return out


def _tail(path: Path, limit: int = 400) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""


class NetnsDriver(Driver):
    name = "netns"

    def __init__(self, settings: Settings, bwrap: str = "bwrap") -> None:
        self.s = settings
        self.bwrap = bwrap
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    # ---- pure -----------------------------------------------------------------------------------
    def guest_dir(self) -> Path:
        return self.s.data_dir / "guest"

    def argv(self, spec: SandboxSpec) -> list[str]:
        guest, wd = self.guest_dir(), spec.workdir
        return [
            "nsenter", f"--net={NETNS_RUN_DIR / spec.slot.netns}", "--",
            "setpriv", f"--reuid={self.s.sandbox_uid}", f"--regid={self.s.sandbox_gid}", "--clear-groups", "--",
            self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session",
            "--hostname", spec.slot.netns,
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin", "--ro-bind", "/etc", "/etc",
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/home", "--tmpfs", "/run",
            "--bind", str(spec.home or wd / "home"), GUEST_HOME,
            "--ro-bind", str(wd / "run"), "/run/hearth",
            "--ro-bind", str(guest), "/opt/hearth",
            "--setenv", "HOME", GUEST_HOME, "--setenv", "PYTHONPATH", "/opt/hearth", "--setenv", "USER", "hearth",
            "--setenv", "BROWSER", "/opt/hearth/hearth_agent/browser_hook.py",
            "--chdir", GUEST_HOME,
            "/usr/bin/python3", "-m", "hearth_agent", "--config", "/run/hearth/agent.json",
        ]  # fmt: skip

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        if shutil.which(self.bwrap) is None:
            raise DriverError(Hop.DRIVER, f"{self.bwrap} not found", "install bubblewrap (scripts/setup.sh)")
        try:
            async with AsyncExitStack() as undo:
                if not await asyncio.to_thread(netlink.create_netns, spec.slot.netns):
                    await self.destroy(spec)  # leftovers of this slot (crash): ours to replace
                    await asyncio.to_thread(netlink.create_netns, spec.slot.netns)
                undo.push_async_callback(asyncio.to_thread, netlink.remove_netns, spec.slot.netns)
                undo.push_async_callback(ports.remove_port, self.s, spec.slot.veth_host)
                await ports.add_veth(self.s, spec.slot)
                mark("namespace")
                undo.push_async_callback(asyncio.to_thread, shutil.rmtree, spec.workdir, True)
                await asyncio.to_thread(self._prepare_dirs, spec)
                undo.push_async_callback(self._kill, spec)
                proc = await self._spawn(spec)
                await self._wait_agent_port(spec, proc)
                mark("process")
                undo.pop_all()
                return SandboxInfo(pid=proc.pid, details={"netns": spec.slot.netns, "veth": spec.slot.veth_host})
        except HearthError:
            raise
        except Exception as exc:
            raise DriverError(
                Hop.DRIVER,
                f"netns sandbox start failed: {type(exc).__name__}: {exc}",
                "see the agent log in the sandbox directory",
            ) from exc

    def _prepare_dirs(self, spec: SandboxSpec) -> None:
        uid, gid = self.s.sandbox_uid, self.s.sandbox_gid
        self._install_guest()
        for anc in [*reversed(spec.workdir.parents)]:
            if anc.exists() and not os.stat(anc).st_mode & 0o001:
                raise DriverError(
                    Hop.DRIVER,
                    f"{anc} is not traversable by the sandbox user (uid {uid})",
                    f"chmod o+x {anc}, or set HEARTH_DATA_DIR to a directory whose parents are traversable",
                )
        (spec.workdir / "logs").mkdir(parents=True, exist_ok=True)
        os.chmod(spec.workdir, 0o711)
        home = spec.home or spec.workdir / "home"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(home, uid, gid)
        run = spec.workdir / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        os.chown(run, uid, gid)
        cfg = {
            "ip": str(spec.slot.ip), "agent_port": spec.agent_port, "rfb_port": spec.rfb_port, "screen": spec.screen,
            "start_url": spec.start_url, "chromium": spec.chromium, "secret": spec.secret,
            "session_id": spec.session_id, "desktop": spec.desktop,
            "callback": f"http://{spec.slot.gateway}:{self.s.callback_port}",
        }  # fmt: skip
        path = run / "agent.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg, f)
        os.chown(path, uid, gid)

    def _install_guest(self) -> None:
        """Copy the guest packages (stdlib only) to a world-readable place the sandbox user can bind."""
        dest = self.guest_dir()
        for pkg in (hearth_agent, hearth_example):
            src = Path(next(iter(pkg.__path__)))
            target = dest / src.name
            tmp = dest / f".{src.name}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        for root, dirs, files in os.walk(dest):
            os.chmod(root, 0o755)
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o755 if f.endswith("_hook.py") else 0o644)
        p = dest
        while p != p.parent:
            if p.exists() and not os.stat(p).st_mode & 0o001:
                os.chmod(p, os.stat(p).st_mode | 0o001)  # hearth's own data dirs only become traversable
            p = p.parent
            if p == self.s.data_dir.parent:
                break

    async def _spawn(self, spec: SandboxSpec) -> asyncio.subprocess.Process:
        logf = open(spec.workdir / "logs" / "agent.log", "ab")  # noqa: ASYNC230 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(spec), stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
            )
        finally:
            logf.close()
        self._procs[spec.slot.netns] = proc
        return proc

    async def _wait_agent_port(self, spec: SandboxSpec, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
        """Until the agent listens (its first act), or fail fast with its log when it exits."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise DriverError(
                    Hop.AGENT,
                    f"the sandbox agent exited with {proc.returncode}: "
                    f"{_tail(spec.workdir / 'logs' / 'agent.log') or 'no output'}",
                    "check bubblewrap (unprivileged user namespaces) and the agent log",
                )
            if await asyncio.to_thread(self._port_open, spec):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        raise DriverError(
            Hop.AGENT,
            f"agent did not listen on {spec.slot.ip}:{spec.agent_port} within {timeout:.0f}s",
            "see the agent log",
        )

    def _port_open(self, spec: SandboxSpec) -> bool:
        sock = socket_in_netns(self.s.fabric_netns)
        try:
            sock.settimeout(0.5)
            return sock.connect_ex((str(spec.slot.ip), spec.agent_port)) == 0
        finally:
            sock.close()

    async def _kill(self, spec: SandboxSpec, grace: float = 2.0) -> None:
        """TERM every process of the sandbox, KILL what is left after `grace`, and wait until all are gone."""
        proc = self._procs.pop(spec.slot.netns, None)
        pids = set(await asyncio.to_thread(pids_in_netns, spec.slot.netns))
        if proc is not None and proc.returncode is None:
            pids.add(proc.pid)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if proc is not None and proc.returncode is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), 0.05)
                pids = {p for p in pids if _running(p)} | set(await asyncio.to_thread(pids_in_netns, spec.slot.netns))
                if not pids:
                    return
                await asyncio.sleep(0.05)
        if pids:
            raise DriverError(Hop.DRIVER, f"sandbox processes {sorted(pids)} did not exit", "kill them by hand")

    async def destroy(self, spec: SandboxSpec) -> None:
        await self._kill(spec)
        await ports.remove_port(self.s, spec.slot.veth_host)
        await asyncio.to_thread(netlink.remove_netns, spec.slot.netns)
        await asyncio.to_thread(shutil.rmtree, spec.workdir, True)

    async def alive(self, spec: SandboxSpec) -> bool:
        proc = self._procs.get(spec.slot.netns)
        if proc is not None:
            return proc.returncode is None
        return bool(await asyncio.to_thread(pids_in_netns, spec.slot.netns))


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
