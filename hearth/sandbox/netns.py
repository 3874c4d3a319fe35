"""The namespace driver: a browser desktop in its own network namespace, unprivileged, under bubblewrap.

Per sandbox: netns `<fabric>-s<slot>`, a veth whose outer end is an isolated port of the fabric bridge, the leased
address with a default route via BRIDGE_IP; inside, the guest agent (which starts and supervises Xvfb, Openbox,
x11vnc and Chromium) runs as the unprivileged sandbox user with private PID/IPC/UTS namespaces, /tmp and HOME, and
an environment built from scratch (the controller's secrets never reach it). Everything derives from the slot, so
`destroy` needs nothing but the spec — also after a controller crash.

Work directory (`spec.workdir`, 0711 root): `home/` (0700, sandbox user; HOME inside, unless `spec.home` is given),
`run/` (0700, sandbox user; bound read-only at /run/hearth), `chromium-etc/` (root, 0755: the root's /etc/chromium
plus hearth's managed policies, hearth_agent/policy.py — bound read-only over /etc/chromium) and `logs/` (0700 root;
`agent.log`, the launcher's and agent's stdout/stderr — outside the sandbox's reach).

The agent's config (with the per-sandbox secret) is never a file: it goes through a pipe the agent reads once at
start (`--config /dev/fd/N`), and the agent then makes itself non-dumpable, so the desktop and browser — same uid —
can read neither the secret nor the agent's memory (/proc/<agent>/mem, environ, fd: root-owned for it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hearth.config import Settings
from hearth.egress.policy import resolv_conf
from hearth.errors import DriverError, HearthError, Hop
from hearth.fabric import dial, netlink, ports
from hearth.guest import clis, configdrive
from hearth.guest import packages as guestpkg
from hearth.guest.clis import GUEST_CLIS
from hearth.guest.layout import GuestImage
from hearth.sandbox import hostscope, listening, steps
from hearth.sandbox.base import Offers, SandboxInfo, SandboxSpec, StageMark
from hearth.sandbox.procs import SharedScan, pids_in_netns, stop_sandbox_processes
from hearth.sandbox.steps import Check, Step
from hearth.sandbox.workdir import remove_workdir, rmtree, untraversable
from hearth_agent.policy import write_policy

__all__ = ["NetnsDriver", "pids_in_netns"]

log = logging.getLogger("hearth.sandbox.netns")
ALIVE_SCAN_AGE = 1.0  # seconds a pass over /proc may be old for a liveness answer (the watchdog ticks every 2 s)
GUEST_HOME = "/home/hearth"
GUEST_LIB = "/opt/hearth"
LAUNCH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
AGENT_LISTEN_TIMEOUT = 20.0


@dataclass
class _Boot:
    """What one start's steps find for the later ones."""

    bwrap: str = ""
    guest: Path = Path()
    proc: asyncio.subprocess.Process | None = None

    def set_bwrap(self, name: str) -> None:
        found = shutil.which(name)
        if found is None:
            raise DriverError(Hop.DRIVER, f"{name} not found", "install bubblewrap (scripts/setup.sh)")
        self.bwrap = found

    async def set_guest(self, found: Awaitable[Path]) -> None:
        self.guest = await found


class NetnsDriver:
    name: ClassVar[str] = "netns"
    offers: ClassVar[Offers] = Offers(persistent_home=True, guest_netns=True, controller_agent=True)

    def __init__(self, settings: Settings, bwrap: str = "bwrap") -> None:
        self.s = settings
        self.bwrap = bwrap
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._guest: Path | None = None
        self._scans = SharedScan()  # sandboxes stopping at once (a drain) share each pass over /proc

    def console_tail(self, spec: SandboxSpec, limit: int = 8192) -> str:
        raise DriverError(Hop.DRIVER, "the netns driver has no guest console", "ask `offers.console_tail` first")

    # ---- pure -----------------------------------------------------------------------------------
    def ids(self, spec: SandboxSpec) -> tuple[int, int]:
        """The uid/gid a sandbox runs as: each browser sandbox its own, derived from its slot (base + 2*slot; the
        odd neighbour is kept free for a separate agent uid), so no two live sandboxes share one; a CLI sandbox
        (persistent home, `spec.home`) the stable HEARTH_SANDBOX_UID that owns its home across restarts."""
        if spec.home is not None:
            return self.s.sandbox_uid, self.s.sandbox_gid
        uid = self.s.sandbox_uid_base + 2 * spec.slot.index
        return uid, uid

    def home_dir(self, spec: SandboxSpec) -> Path:
        return spec.home or spec.workdir / "home"

    def log_path(self, spec: SandboxSpec) -> Path:
        return spec.workdir / "logs" / "agent.log"

    def agent_config(self, spec: SandboxSpec) -> dict[str, Any]:
        """The agent's config document — the one every driver gives its agent (`hearth.guest.configdrive.document`)
        plus the address the agent binds (a VM guest learns it from the kernel's `ip=`). Holds the secret: it goes
        through a pipe, never a file, and is never logged."""
        return configdrive.document(spec, self.s.callback_port) | {"ip": str(spec.slot.ip)}

    def image_root(self) -> Path | None:
        """The golden image's root filesystem when one is built (`hearth image build`): then this driver runs the
        very userspace the VM drivers boot (agent included). Without an image, the host's /usr and /etc."""
        root = GuestImage.at(self.s.images).rootfs_dir or self.s.images
        return root if (root / "usr" / "bin" / "python3").exists() and (root / "opt" / "hearth").is_dir() else None

    def root_choice(self) -> str:
        """Which userspace this driver runs, in words (`hearth drivers` shows it; the first start logs it)."""
        root = self.image_root()
        if root is not None:
            return f"the built guest image at {root}"
        return (
            f"the host's /usr and /etc: no built image at {GuestImage.at(self.s.images).rootfs_dir} "
            "(`hearth image build` makes one; HEARTH_IMAGE_DIR points elsewhere)"
        )

    def root_binds(self, guest: Path) -> list[str]:
        root = self.image_root()
        host_clis = clis.installed()  # the pinned provider CLIs of this host (scripts/setup.sh), bound read-only
        if root is not None:  # the image's userspace, with this controller's agent (never an older one baked in)
            binds = ["--ro-bind", str(root), "/", "--ro-bind", str(guest), GUEST_LIB]
            if host_clis is not None and (root / GUEST_CLIS.lstrip("/")).is_dir():
                binds += ["--ro-bind", str(host_clis), GUEST_CLIS]
            return binds
        return [
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin", "--ro-bind", "/etc", "/etc",
            "--ro-bind", str(guest), GUEST_LIB,
            *(["--ro-bind", str(host_clis), GUEST_CLIS] if host_clis is not None else []),
            # The host's font cache: without it every desktop program (openbox, Chromium) scans every font at start
            # (≈0.2 s of CPU per sandbox — the largest part of a boot before the browser).
            "--ro-bind-try", "/var/cache/fontconfig", "/var/cache/fontconfig",
        ]  # fmt: skip

    def resolv_binds(self, spec: SandboxSpec) -> list[str]:
        """Every sandbox resolves through the fabric's DNS forwarder (hearth/egress/dns.py), whatever the root."""
        conf = spec.workdir / "resolv.conf"
        return ["--ro-bind", str(conf), "/etc/resolv.conf"] if conf.is_file() else []

    def policy_binds(self, spec: SandboxSpec) -> list[str]:
        etc = spec.workdir / "chromium-etc"
        return ["--ro-bind", str(etc), "/etc/chromium"] if etc.is_dir() else []

    def argv(self, spec: SandboxSpec, bwrap: str, guest: Path, config_fd: int, notify_fd: int = -1) -> list[str]:
        """nsenter (into the sandbox netns) → setpriv (drop to the sandbox user) → bwrap → the agent, which reads its
        config from the inherited pipe `config_fd` and writes `listening` to the pipe `notify_fd` (when given)."""
        return [
            "nsenter", f"--net={dial.NETNS_RUN_DIR / spec.slot.netns}", "--",
            "setpriv", f"--reuid={self.ids(spec)[0]}", f"--regid={self.ids(spec)[1]}", "--clear-groups",
            "--no-new-privs", "--",
            bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--new-session", "--clearenv", "--hostname", spec.slot.netns,
            *self.root_binds(guest), *self.policy_binds(spec), *self.resolv_binds(spec),
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/home", "--tmpfs", "/run",
            "--bind", str(self.home_dir(spec)), GUEST_HOME,
            "--ro-bind", str(spec.workdir / "run"), "/run/hearth",
            "--setenv", "HOME", GUEST_HOME, "--setenv", "USER", "hearth", "--setenv", "LOGNAME", "hearth",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYTHONPATH", GUEST_LIB, "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--setenv", "BROWSER", f"{GUEST_LIB}/hearth_agent/browser_hook.py",
            "--chdir", GUEST_HOME,
            # -S: no site module (≈3 ms of each start): the agent needs the standard library and PYTHONPATH only
            guestpkg.GUEST_PYTHON, "-P", "-S", "-m", "hearth_agent", "--config", f"/dev/fd/{config_fd}",
            *(["--notify-fd", str(notify_fd)] if notify_fd >= 0 else []),
        ]  # fmt: skip

    # ---- start: named steps, run by the one runner (hearth/sandbox/steps.py) -------------------------------------
    def steps(self, spec: SandboxSpec, boot: _Boot) -> list[Step]:
        """What `start` does, in order; each undo is registered once its step is done."""
        netns = spec.slot.netns
        return [
            Step("reclaim", lambda: self._reclaim(spec)),
            Step("netns", lambda: self._create_netns(netns), lambda: asyncio.to_thread(netlink.remove_netns, netns)),
            Step(
                "namespace",
                lambda: ports.add_veth(self.s, spec.slot),
                lambda: ports.remove_port(self.s, spec.slot.veth_host),
                stage=True,
                partial=True,
            ),
            Step("guest", lambda: boot.set_guest(asyncio.to_thread(self._guest_dir))),
            Step(
                "workdir",
                lambda: asyncio.to_thread(self._prepare_dirs, spec, boot.guest),
                lambda: asyncio.to_thread(remove_workdir, spec.workdir),
                partial=True,
            ),
            Step(
                "process", lambda: self._boot(spec, boot), lambda: self._stop_processes(spec), stage=True, partial=True
            ),
        ]

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        boot = _Boot()
        checks = [Check("bubblewrap", lambda: boot.set_bwrap(self.bwrap))]
        what = f"netns sandbox {spec.slot.netns}"
        await steps.run(self.steps(spec, boot), mark, what=what, hint=f"see {self.log_path(spec)}", checks=checks)
        assert boot.proc is not None
        details = {"netns": spec.slot.netns, "veth": spec.slot.veth_host, "ip": str(spec.slot.ip)}
        details |= {"workdir": str(spec.workdir), "log": str(self.log_path(spec))}
        return SandboxInfo(pid=boot.proc.pid, details=details)

    async def _reclaim(self, spec: SandboxSpec) -> None:
        if netlink.netns_exists(spec.slot.netns):
            log.warning("replacing leftovers of this slot", extra={"netns": spec.slot.netns})
            await self.destroy(spec)

    @staticmethod
    async def _create_netns(netns: str) -> None:
        if not await asyncio.to_thread(netlink.create_netns, netns):
            raise DriverError(Hop.DRIVER, f"namespace {netns} appeared concurrently", "is the slot leased twice?")

    async def _boot(self, spec: SandboxSpec, boot: _Boot) -> None:
        """Launch the sandbox's processes and wait until its agent listens."""
        boot.proc, notices = await self._launch(spec, boot.bwrap, boot.guest)
        await self._wait_agent(spec, boot.proc, min(self.s.ready_timeout, AGENT_LISTEN_TIMEOUT), notices)

    def _guest_dir(self) -> Path:
        if self._guest is None:  # the first start of this controller: say which userspace sandboxes run
            log.warning("netns sandboxes run %s", self.root_choice())
        if self._guest is None or not self._guest.is_dir():
            # The test identity provider only where it is configured (HEARTH_EXAMPLE_ISSUER: tests, selftest).
            pkgs = guestpkg.packages(for_tests=bool(self.s.example_issuer))
            self._guest = guestpkg.install(self.s.data_dir / "guest", pkgs)
        return self._guest

    def _prepare_dirs(self, spec: SandboxSpec, guest: Path) -> None:
        uid, gid = self.ids(spec)
        wd = spec.workdir
        if not wd.is_absolute() or wd in (Path("/"), self.s.data_dir):
            raise DriverError(Hop.DRIVER, f"refusing work directory {wd}", "derive it from the slot")
        wd.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(wd, 0o711)
        (wd / "logs").mkdir(mode=0o700, exist_ok=True)
        home = self.home_dir(spec)
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(home, uid, gid, follow_symlinks=False)
        etc = wd / "chromium-etc"
        if etc.exists():  # a leftover of a crashed start of this slot
            rmtree(etc)
        shipped = (self.image_root() or Path("/")) / "etc" / "chromium"
        if shipped.is_dir():  # bubblewrap can only mount over a directory that exists in the root
            shutil.copytree(shipped, etc, symlinks=True, ignore=shutil.ignore_patterns("policies"))
            os.chmod(etc, 0o755)
            write_policy(str(etc), configdrive.LOCAL_PROXY_PORT if spec.local_proxy else None, spec.extra_ca)
        (wd / "resolv.conf").write_text(resolv_conf(self.s))  # the DNS forwarder on the bridge (hearth/egress)
        os.chmod(wd / "resolv.conf", 0o644)
        run = wd / "run"
        if run.exists():  # a leftover of a crashed start of this slot
            rmtree(run)
        run.mkdir(mode=0o700)
        os.chown(run, uid, gid)
        blocked = untraversable(sorted({a for p in (home, run, guest) for a in p.parents}), uid, gid)
        if blocked is not None:
            raise DriverError(
                Hop.DRIVER,
                f"{blocked} is not traversable by the sandbox user (uid {uid})",
                f"chmod o+x {blocked}, or set HEARTH_DATA_DIR to a directory whose parents are traversable",
            )
        root = self.image_root()
        if root is not None:  # bubblewrap binds it as the sandbox user: the real path must be reachable by that user
            real = root.resolve()
            blocked = untraversable([*sorted(real.parents), real], uid, gid)
            if blocked is not None:
                raise DriverError(
                    Hop.DRIVER,
                    f"the guest image root {real} is not reachable by the sandbox user (uid {uid}) at {blocked}",
                    f"chmod o+x {blocked}, or keep the image under a traversable directory (HEARTH_IMAGE_DIR)",
                )

    async def _launch(self, spec: SandboxSpec, bwrap: str, guest: Path) -> tuple[asyncio.subprocess.Process, int]:
        """The sandbox's processes; and the read end of the agent's notification pipe (`_wait_agent` closes it)."""
        config = json.dumps(self.agent_config(spec)).encode()  # far below a pipe's capacity: the write cannot block
        fd = os.open(self.log_path(spec), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        r, w = os.pipe()
        notices, notify = os.pipe2(os.O_CLOEXEC)
        try:
            os.write(w, config)
            os.close(w)
            w = -1
            hostscope.prepare(self.s.sandbox_cgroup, self.s.sandbox_memory_max, self.s.sandbox_cpu_max)
            proc = await asyncio.create_subprocess_exec(
                *hostscope.in_scope(self.argv(spec, bwrap, guest, r, notify), self.s.sandbox_cgroup),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=LAUNCH_ENV,
                cwd="/",
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
        self._procs[spec.slot.netns] = proc
        log.info("sandbox launched", extra={"netns": spec.slot.netns, "pid": proc.pid})
        return proc, notices

    async def _wait_agent(
        self, spec: SandboxSpec, proc: asyncio.subprocess.Process, timeout: float, notices: int = -1
    ) -> None:
        await listening.wait_agent(
            self.s.fabric_netns,
            str(spec.slot.ip),
            spec.agent_port,
            proc,
            notices,
            timeout,
            self.log_path(spec),
            f"check bubblewrap (unprivileged user namespaces) and {self.log_path(spec)}",
        )

    # ---- stop -----------------------------------------------------------------------------------
    async def _stop_processes(self, spec: SandboxSpec) -> None:
        await stop_sandbox_processes(spec.slot.netns, self._procs.get(spec.slot.netns), scans=self._scans)
        self._procs.pop(spec.slot.netns, None)

    async def destroy(self, spec: SandboxSpec) -> None:
        """Processes (found by namespace), the bridge port, the namespace, the work directory. Idempotent."""
        try:
            await self._stop_processes(spec)
            await ports.remove_port(self.s, spec.slot.veth_host)
            await asyncio.to_thread(netlink.remove_netns, spec.slot.netns)
            await asyncio.to_thread(remove_workdir, spec.workdir)
        except HearthError:
            raise
        except Exception as exc:
            raise DriverError(
                Hop.DRIVER,
                f"cannot destroy netns sandbox {spec.slot.netns}: {type(exc).__name__}: {exc}",
                "retry `hearth sandbox destroy`; see `hearth doctor`",
            ) from exc

    async def alive(self, spec: SandboxSpec) -> bool:
        proc = self._procs.get(spec.slot.netns)
        if proc is not None and proc.returncode is None:
            return True
        # one pass over /proc answers every sandbox the watchdog asks about in a tick (after an adoption, none is
        # this controller's child): not one pass per sandbox
        return bool(pids_in_netns(spec.slot.netns, await self._scans.rows(max_age=ALIVE_SCAN_AGE)))
