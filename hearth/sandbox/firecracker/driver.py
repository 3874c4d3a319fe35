"""The Firecracker driver: one microVM per sandbox, its TAP on the fabric bridge, configured over the API socket.

`start` acquires in this order and registers each undo the moment the thing exists (LIFO on failure):
workdir (+ jail) → files (config drive, log, rootfs copy) → TAP → VMM process. Unwinding therefore kills the
process and *waits for it to exit* before the TAP is deleted (a TAP held by a live process cannot be reused: EBUSY),
then deletes the files. `destroy(spec)` needs nothing but the spec: the process is found by its argv in /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hearth.childproc import signal_child
from hearth.config import Settings
from hearth.errors import DriverError, HearthError, Hop
from hearth.fabric.ports import add_tap, remove_port
from hearth.guest.layout import GuestImage
from hearth.sandbox import procs as proc
from hearth.sandbox import steps
from hearth.sandbox.base import Offers, SandboxInfo, SandboxSpec, StageMark
from hearth.sandbox.firecracker import checks, disk
from hearth.sandbox.firecracker.api import FirecrackerApi
from hearth.sandbox.firecracker.plan import (
    CONFIG_DRIVE,
    INITRD,
    KERNEL,
    LOG,
    METRICS,
    ROOTFS,
    JailerConfig,
    Layout,
    LogLevel,
    MachineShape,
    Plan,
    is_vmm_cmdline,
    layout_for,
    plan,
    socket_path_problem,
)
from hearth.sandbox.firecracker.vmm import until_exit, wait_socket
from hearth.sandbox.steps import Check, Step

log = logging.getLogger("hearth.sandbox.firecracker")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")  # the cgroup v2 hierarchy (v1 controllers are found in /proc/mounts)


@dataclass
class _Boot:
    """What one start's checks and steps find for the later ones."""

    binary: str = ""
    jailer: str | None = None
    planned: Plan | None = None
    child: asyncio.subprocess.Process | None = None
    copy: str = ""
    version: str = ""

    def set_binaries(self, found: tuple[str, str | None]) -> None:
        self.binary, self.jailer = found

    @property
    def plan(self) -> Plan:
        assert self.planned is not None, "planned by the socket-path check, before any step"
        return self.planned


class FirecrackerDriver:
    """Sandboxes as Firecracker microVMs. Needs root, /dev/kvm, the fabric, and the firecracker binary.

    `image` is the guest (uncompressed `vmlinux`, optional initrd, ext4 rootfs); `binary` the firecracker
    executable (a name on PATH or a path); `jailer` runs it through Firecracker's jailer instead of `nsenter`.
    """

    name: ClassVar[str] = "firecracker"
    offers: ClassVar[Offers] = Offers(ports=("tap",))

    def __init__(
        self,
        settings: Settings,
        image: GuestImage,
        binary: str = "firecracker",
        jailer: JailerConfig | None = None,
        *,
        machine: MachineShape | None = None,
        log_level: LogLevel = "Info",
        metrics: bool = False,
        extra_boot_args: str = "",
        kvm_device: Path | None = Path("/dev/kvm"),
        start_timeout: float = 10.0,
        api_timeout: float = 5.0,
        boot_timeout: float = 15.0,
        shutdown_grace: float = 2.0,
        kill_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.image = image
        self.binary = binary
        self.jailer = jailer
        self.machine = machine or MachineShape()
        self.machine.check()  # a fractional vCPU count fails here, at construction, naming the setting
        self.log_level: LogLevel = log_level
        self.metrics = metrics
        self.extra_boot_args = extra_boot_args
        self.kvm_device = kvm_device
        self.start_timeout = start_timeout
        self.api_timeout = api_timeout
        self.boot_timeout = boot_timeout
        self.shutdown_grace = shutdown_grace
        self.kill_timeout = kill_timeout
        self._children: dict[str, asyncio.subprocess.Process] = {}

    def console_tail(self, spec: SandboxSpec, limit: int = 8192) -> str:
        raise DriverError(Hop.DRIVER, "the firecracker driver has no guest console", "ask `offers.console_tail` first")

    # ---- pure ------------------------------------------------------------------------------------
    def plan(self, spec: SandboxSpec, binary: str | None = None, jailer_binary: str | None = None) -> Plan:
        """What `start(spec)` will do (layout, argv, API calls), without touching the host."""
        return plan(
            spec,
            self.image,
            self.settings.fabric_netns,
            self.machine,
            binary=binary or self.binary,
            jailer=self.jailer,
            jailer_binary=jailer_binary,
            log_level=self.log_level,
            metrics=self.metrics,
            extra_boot_args=self.extra_boot_args,
            callback_port=self.settings.callback_port,
        )

    def layout(self, spec: SandboxSpec) -> Layout:
        return layout_for(spec, self.image, self.jailer, Path(self.binary).name)

    def _matcher(self, layout: Layout) -> proc.Matcher:
        return functools.partial(is_vmm_cmdline, api_socket=str(layout.api_socket), ident=layout.vm_id)

    # ---- checks before acquiring anything ----------------------------------------------------------
    def checks(self, boot: _Boot, fabric: bool = True) -> list[Check]:
        """The validation list: fail fast, before anything is created, naming the fix. The binaries' resolved paths
        land in `boot`. `fabric=False` skips the fabric check (for choosing a driver before the fabric is up)."""
        return [
            Check("firecracker binary", lambda: boot.set_binaries(checks.binaries(self.binary, self.jailer))),
            Check("kvm", lambda: checks.kvm(self.kvm_device)),
            Check("kernel", lambda: checks.kernel(self.image)),
            Check("image files", lambda: checks.image_files(self.image)),
            *([Check("fabric", lambda: checks.fabric(self.settings.fabric_netns))] if fabric else []),
        ]

    def preflight(self, fabric: bool = True) -> tuple[str, str | None]:
        """Run the checks alone; returns the resolved (firecracker, jailer)."""
        boot = _Boot()
        steps.preflight(self.checks(boot, fabric), what="firecracker")
        return boot.binary, boot.jailer

    # ---- the Driver seam ---------------------------------------------------------------------------
    def steps(self, spec: SandboxSpec, boot: _Boot) -> list[Step]:
        """What `start` does after the checks, in order. Unwinding kills the VMM and waits for its exit before the
        TAP goes (a TAP held by a live process cannot be reused: EBUSY), then the files go."""
        return [
            Step("reclaim", lambda: self._reclaim(boot.plan.layout)),
            Step("files", lambda: self._files(boot), lambda: self._remove_files(boot.plan.layout), partial=True),
            Step(
                "tap",
                lambda: add_tap(self.settings, spec.slot),
                lambda: remove_port(self.settings, spec.slot.tap_name),
                partial=True,
            ),
            Step("process", lambda: self._boot(boot), lambda: self._kill(boot), stage=True, partial=True),
        ]

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        boot = _Boot()

        def socket_path() -> None:
            boot.planned = self.plan(spec, binary=boot.binary, jailer_binary=boot.jailer)
            too_long = socket_path_problem(boot.plan.layout)
            if too_long:
                hint = "use a shorter HEARTH_DATA_DIR (e.g. /var/lib/hearth) or jailer chroot base dir"
                raise DriverError(Hop.CONFIG, too_long, hint)

        checks = [*self.checks(boot), Check("socket path", socket_path)]
        what = f"firecracker sandbox {spec.slot.netns}"
        hint = f"see {spec.workdir}"
        await steps.run(self.steps(spec, boot), mark, what=what, hint=hint, checks=checks)
        lay, child = boot.plan.layout, boot.child
        assert child is not None
        log.info("microVM started", extra={"pid": child.pid, "vm_id": lay.vm_id, "rootfs_copy": boot.copy})
        return SandboxInfo(
            pid=child.pid,
            details={
                "vm_id": lay.vm_id,
                "api_socket": str(lay.api_socket),
                "console_log": str(lay.console_log),
                "firecracker_log": str(lay.host(LOG)),
                "rootfs": str(lay.host(ROOTFS)),
                "rootfs_copy": boot.copy,
                "firecracker_version": boot.version,
                "jailed": "yes" if lay.jailed else "no",
            },
        )

    async def _files(self, boot: _Boot) -> None:
        lay = boot.plan.layout
        try:
            await asyncio.to_thread(self._make_dirs, lay)
            boot.copy = await self._make_files(boot.plan)
        except OSError as exc:
            raise DriverError(
                Hop.DRIVER,
                f"cannot prepare the sandbox files in {lay.root}: {exc}",
                "check free space and permissions of HEARTH_DATA_DIR",
            ) from exc

    async def _boot(self, boot: _Boot) -> None:
        """Launch the VMM, wait for its API socket, configure and boot the guest over it."""
        p, lay = boot.plan, boot.plan.layout
        child = boot.child = await self._spawn(p)
        await until_exit(child, lay, wait_socket(lay, child, self.start_timeout), "opening its API socket")
        async with FirecrackerApi(lay.api_socket, self.api_timeout) as api:
            boot.version = await until_exit(child, lay, api.version(), "answering GET /version")
            for call in p.calls:
                timeout = self.boot_timeout if call.path == "/actions" else None
                await until_exit(child, lay, api.call(call, timeout), f"answering {call.method} {call.path}")

    async def _kill(self, boot: _Boot) -> None:
        if boot.child is not None:
            await self._kill_child(boot.plan.layout, boot.child)

    async def destroy(self, spec: SandboxSpec) -> None:
        lay = self.layout(spec)
        await self._stop(lay, graceful=True)  # raises if a process survives SIGKILL: its TAP is then kept
        await remove_port(self.settings, spec.slot.tap_name)
        await self._remove_files(lay)

    async def alive(self, spec: SandboxSpec) -> bool:
        lay = self.layout(spec)
        match = self._matcher(lay)
        child = self._children.get(lay.vm_id)
        if child is not None and child.returncode is None:  # cheap path: our own child, still the same process
            argv = proc.cmdline(child.pid)
            if argv and match(argv) and not proc.is_zombie(child.pid):
                return True
        return bool(await asyncio.to_thread(proc.find_pids, match))  # after a restart: by argv

    # ---- steps ---------------------------------------------------------------------------------------
    async def _reclaim(self, lay: Layout) -> None:
        if await asyncio.to_thread(proc.find_pids, self._matcher(lay)):
            log.warning("killing a leftover VMM of this slot", extra={"vm_id": lay.vm_id})
        await self._stop(lay, graceful=False)
        await self._remove_files(lay)  # includes a stale API socket (firecracker refuses to bind over it)

    @staticmethod
    def _make_dirs(lay: Layout) -> None:
        lay.workdir.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        lay.workdir.mkdir(mode=0o700)
        lay.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def _make_files(self, p: Plan) -> str:
        lay = p.layout
        await asyncio.to_thread(disk.write_private, lay.host(CONFIG_DRIVE), p.config_drive)
        await asyncio.to_thread(disk.touch_private, lay.host(LOG))
        if self.metrics:
            await asyncio.to_thread(disk.touch_private, lay.host(METRICS))
        copy = await disk.clone_rootfs(lay.rootfs_src, lay.host(ROOTFS))
        if self.jailer is not None:
            await asyncio.to_thread(self._fill_jail, lay, self.jailer)
        return copy

    def _fill_jail(self, lay: Layout, jailer: JailerConfig) -> None:
        """The jailer copies only the binary: link the kernel/initrd in, hand the writable files to uid:gid."""
        disk.link_or_copy(lay.kernel_src, lay.host(KERNEL))
        if lay.initrd_src is not None:
            disk.link_or_copy(lay.initrd_src, lay.host(INITRD))
        for name in (ROOTFS, CONFIG_DRIVE, LOG, *((METRICS,) if self.metrics else ())):
            os.chown(lay.host(name), jailer.uid, jailer.gid)

    async def _spawn(self, p: Plan) -> asyncio.subprocess.Process:
        lay = p.layout
        fd = os.open(lay.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            child = await asyncio.create_subprocess_exec(
                *p.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd=lay.workdir,
                env={"PATH": os.environ.get("PATH", _DEFAULT_PATH)},  # none of the controller's secrets
                start_new_session=True,  # not killed by a Ctrl-C of the controller; destroy(spec) ends it
            )
        except OSError as exc:
            raise DriverError(
                Hop.DRIVER, f"cannot launch {p.argv[0]}: {exc}", "check HEARTH_FIRECRACKER_BIN / HEARTH_JAILER_BIN"
            ) from exc
        finally:
            os.close(fd)
        self._children[lay.vm_id] = child
        return child

    async def _kill_child(self, lay: Layout, child: asyncio.subprocess.Process) -> None:
        """Undo for the process: SIGKILL, then wait for the exit, so the TAP is free before it is deleted."""
        signal_child(child)
        try:
            await asyncio.wait_for(child.wait(), self.kill_timeout)
        except TimeoutError:
            log.error("firecracker pid %s survived SIGKILL for %ss", child.pid, self.kill_timeout)
        self._children.pop(lay.vm_id, None)

    async def _stop(self, lay: Layout, graceful: bool) -> None:
        """End this slot's VMM (found by argv): SendCtrlAltDel and a short grace, then SIGKILL and wait."""
        match = self._matcher(lay)
        pids = await asyncio.to_thread(proc.find_pids, match)
        fds = {pid: fd for pid in pids if (fd := proc.open_pidfd(pid, match)) is not None}
        try:
            if not fds:
                return
            if graceful and self.shutdown_grace > 0 and lay.api_socket.exists():
                await self._ctrl_alt_del(lay)
                await asyncio.gather(*(proc.wait_exit(fd, self.shutdown_grace) for fd in fds.values()))
            for fd in fds.values():
                proc.send(fd, signal.SIGKILL)
            for pid, fd in fds.items():
                if not await proc.wait_exit(fd, self.kill_timeout):
                    raise DriverError(
                        Hop.DRIVER,
                        f"firecracker pid {pid} ({lay.vm_id}) did not exit {self.kill_timeout:g}s after SIGKILL",
                        "it is stuck in the kernel (see dmesg); its TAP and files are kept until it exits",
                    )
        finally:
            for fd in fds.values():
                os.close(fd)
        child = self._children.pop(lay.vm_id, None)
        if child is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), self.kill_timeout)  # reap our own child

    async def _ctrl_alt_del(self, lay: Layout) -> None:
        """Ask the guest to shut down (needs i8042 + AT keyboard in the guest kernel; Firecracker exits on reset)."""
        try:
            async with FirecrackerApi(lay.api_socket, min(1.0, self.shutdown_grace)) as api:
                await api.request("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        except HearthError as exc:
            log.debug("SendCtrlAltDel not accepted: %s", exc.message)

    async def _remove_files(self, lay: Layout) -> None:
        """Workdir, jail and the jail's cgroups (the jailer leaves them behind); gone already is success."""
        await asyncio.to_thread(disk.remove_tree, lay.workdir)
        if lay.jail_dir is not None and not lay.jail_dir.is_relative_to(lay.workdir):
            await asyncio.to_thread(disk.remove_tree, lay.jail_dir)
        for cg in await asyncio.to_thread(self._jail_cgroups, lay):
            try:
                cg.rmdir()  # a cgroup directory is removed with rmdir, its control files go with it
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the jail's cgroup %s: %s", cg, exc)

    def _jail_cgroups(self, lay: Layout) -> list[Path]:
        """Cgroup directories the jailer creates for `--cgroup` values: <hierarchy>/<exec name>/<vm id>."""
        j = self.jailer
        if j is None or not j.cgroups:
            return []
        parent = Path(self.binary).name  # the jailer's default --parent-cgroup
        if j.cgroup_version == 2:
            return [CGROUP_ROOT / parent / lay.vm_id]
        wanted = {c.split(".", 1)[0] for c in j.cgroups}  # cpuset.cpus=0 → cpuset
        out = []
        with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 3 and fields[2] == "cgroup" and wanted & set(fields[3].split(",")):
                    out.append(Path(fields[1]) / parent / lay.vm_id)
        return out
