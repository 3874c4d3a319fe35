"""The QEMU driver: each sandbox is a VM booting the golden image, on a TAP port of the fabric bridge.

`start` acquires, in order, registering each undo as it goes: the workdir (0700) with the config drive and a qcow2
overlay on the golden ext4 (copy-on-write: never a full copy), the TAP `hearth-t<slot>` (vnet_hdr, isolated port),
then QEMU itself — inside the fabric namespace — and its QMP connection (stage `process`). It returns once the
serial console shows the guest's init running (stage `kernel`); the session service then waits for the agent, VNC
and RFB like for any driver. No sleeps: every wait polls a real signal with a bound, and fails fast (with the
console's last lines) when QEMU exits or the guest panics.

`destroy` needs only the spec: QEMU is found by its pidfile (checked against its command line) or by the QMP socket
path in `/proc/*/cmdline`; it is asked to `quit` over QMP, SIGKILLed after a bound, and **waited for** before the TAP
is deleted (a TAP still held by a process cannot be reused). Anything already gone is success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from qemu.qmp import QMPClient, QMPError

from hearth.config import Settings
from hearth.errors import DriverError, Hop
from hearth.fabric import ports
from hearth.guest import configdrive
from hearth.guest import files as guest
from hearth.guest.layout import GuestImage
from hearth.sandbox import procs, steps
from hearth.sandbox.base import Offers, SandboxInfo, SandboxSpec, StageMark
from hearth.sandbox.qemu import accel as accel_probe
from hearth.sandbox.qemu import pidfd
from hearth.sandbox.qemu.cmdline import Accel, Files, Machine, argv, overlay_argv
from hearth.sandbox.qemu.console import ConsoleWatch, console_tail, fatal_line
from hearth.sandbox.steps import Check, Step

log = logging.getLogger("hearth.sandbox.qemu")
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # its disconnect chatter is not ours to log

QMP_TIMEOUT = 15.0
QUIT_GRACE = 3.0
KILL_WAIT = 5.0
BOOT_TIMEOUT = {"kvm": 30.0, "tcg": 120.0}
IMAGE_HINT = "run `hearth image build` (then `hearth image list`), or set HEARTH_IMAGE_DIR to a built image"


def image_problems(image: GuestImage) -> list[str]:
    """What is missing from the image for QEMU (kernel, initramfs, root disk)."""
    out = []
    for label, path in (("kernel", image.kernel), ("initramfs", image.initrd), ("root disk", image.rootfs)):
        if path is None:
            out.append(label)
        elif not path.is_file():
            out.append(f"{label} {path}")
    return out


def _is_our_qemu(pid: int, files: Files) -> bool:
    qmp = str(files.qmp)
    return any(qmp in a for a in procs.cmdline(pid) or [])


def find_qemu(files: Files) -> int | None:
    """The pid of the QEMU serving `files` (pidfile first, then a scan of /proc), or None."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(files.pidfile.read_text().strip())
        if _is_our_qemu(pid, files) and not procs.is_zombie(pid):
            return pid
    qmp = str(files.qmp)
    found = procs.find_pids(lambda argv: any(qmp in a for a in argv))
    return found[0] if found else None


@dataclass
class _Boot:
    """What one start's steps find for the later ones."""

    files: Files
    proc: asyncio.subprocess.Process | None = None


class QemuDriver:
    name: ClassVar[str] = "qemu"
    offers: ClassVar[Offers] = Offers(console_tail=True, ports=("tap",))

    def __init__(
        self,
        settings: Settings,
        image: GuestImage,
        accel: Accel | None = None,
        *,
        binary: str = "qemu-system-x86_64",
        qemu_img: str = "qemu-img",
        runas: str | None = "nobody",
        boot_timeout: float | None = None,
        extra_append: str = "",
    ) -> None:
        self.s = settings
        self.image = image
        self.binary = binary
        self.qemu_img = qemu_img
        self.runas = runas
        self.extra_append = extra_append
        if accel is None:
            found = accel_probe.probe(settings.data_dir, image, binary)
            accel = found.accel or "tcg"
            self.accel_reason = found.reason
        else:
            self.accel_reason = f"{accel} (given)"
        self.accel: Accel = accel
        self.boot_timeout = boot_timeout or BOOT_TIMEOUT[accel]
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    # ---- pure -----------------------------------------------------------------------------------
    def machine(self) -> Machine:
        return Machine(self.accel, self.s.vm_vcpus, self.s.vm_mem_mib)

    def argv(self, spec: SandboxSpec) -> list[str]:
        return argv(
            spec,
            self.image,
            self.machine(),
            self.s.fabric_netns,
            binary=self.binary,
            runas=self.runas,
            extra_append=self.extra_append,
        )

    def console_tail(self, spec: SandboxSpec, limit: int = 8192) -> str:
        """The end of the sandbox's serial console (kernel messages, init, the agent's log lines)."""
        return console_tail(spec.workdir, limit)

    # ---- start: the validation list, then named steps run by the one runner (hearth/sandbox/steps.py) ------------
    def checks(self) -> list[Check]:
        """What start needs, checked before anything is acquired; each failure names the fix."""

        def image() -> None:
            missing = image_problems(self.image)
            if missing:
                raise DriverError(
                    Hop.DRIVER, f"the guest image is incomplete: missing {', '.join(missing)}", IMAGE_HINT
                )

        def tool(name: str, pkg: str) -> Check:
            def found() -> None:
                if shutil.which(name) is None:
                    raise DriverError(Hop.DRIVER, f"{name} not found", f"install {pkg} (scripts/setup.sh)")

            return Check(name, found)

        return [
            Check("image", image),
            tool(self.binary, "qemu-system-x86"),
            tool(self.qemu_img, "qemu-utils"),
            tool("nsenter", "util-linux"),
        ]

    def preflight(self) -> None:
        """Run the checks alone (the first failure raises)."""
        steps.preflight(self.checks(), what="qemu")

    def steps(self, spec: SandboxSpec, boot: _Boot) -> list[Step]:
        """What `start` does, in order. The process's undo runs before the TAP's: QEMU exits first, then the port."""
        files = boot.files
        return [
            Step("reclaim", lambda: self._reclaim(spec, files)),
            Step(
                "workdir",
                lambda: asyncio.to_thread(self._prepare, spec, files),
                lambda: asyncio.to_thread(shutil.rmtree, spec.workdir, True),
                partial=True,
            ),
            Step("overlay", lambda: self._overlay(files)),
            Step(
                "tap",
                lambda: ports.add_tap(self.s, spec.slot),
                lambda: ports.remove_port(self.s, spec.slot.tap_name),
                partial=True,
            ),
            Step("process", lambda: self._launch(spec, boot), lambda: self._stop(spec), stage=True, partial=True),
            Step("kernel", lambda: self._boot(files, boot), stage=True),
        ]

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        boot = _Boot(Files(spec.workdir))
        files = boot.files
        hint = f"see {files.log} and {files.console} (HEARTH_KEEP_FAILED=true keeps them)"
        what = f"qemu sandbox {spec.slot.netns}"
        await steps.run(self.steps(spec, boot), mark, what=what, hint=hint, checks=self.checks())
        assert boot.proc is not None
        return SandboxInfo(
            pid=boot.proc.pid,
            details={
                "accel": self.accel,
                "machine": "microvm" if self.accel == "kvm" else "q35",
                "tap": spec.slot.tap_name,
                "overlay": str(files.overlay),
                "console": str(files.console),
                "qmp": str(files.qmp),
            },
        )

    async def _reclaim(self, spec: SandboxSpec, files: Files) -> None:
        if spec.workdir.exists() or await asyncio.to_thread(find_qemu, files) is not None:
            await self.destroy(spec)  # leftovers of this slot (crash): ours to replace

    async def _launch(self, spec: SandboxSpec, boot: _Boot) -> None:
        boot.proc = await self._spawn(spec, boot.files)
        await self._connect_qmp(boot.files, boot.proc)

    async def _boot(self, files: Files, boot: _Boot) -> None:
        assert boot.proc is not None
        await self._wait_console(files, boot.proc, guest.MARK_INIT, self.boot_timeout)

    def _prepare(self, spec: SandboxSpec, files: Files) -> None:
        spec.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(spec.workdir, 0o700)
        data = configdrive.encode(configdrive.document(spec, self.s.callback_port))
        fd = os.open(files.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        for path in (files.console, files.log):
            path.touch(mode=0o600)

    async def _overlay(self, files: Files) -> None:
        proc = await asyncio.create_subprocess_exec(
            *overlay_argv(self.image, files, self.qemu_img),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise DriverError(
                Hop.DRIVER,
                f"qemu-img could not create the overlay on {self.image.rootfs}: {out.decode(errors='replace').strip()}",
                IMAGE_HINT,
            )

    async def _spawn(self, spec: SandboxSpec, files: Files) -> asyncio.subprocess.Process:
        logf = open(files.log, "ab")  # noqa: ASYNC230 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(spec), stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
            )
        finally:
            logf.close()
        self._procs[spec.slot.netns] = proc
        log.info("qemu started", extra={"pid": proc.pid, "accel": self.accel, "tap": spec.slot.tap_name})
        return proc

    def _exited(self, files: Files, proc: asyncio.subprocess.Process, what: str) -> DriverError:
        said = accel_probe.tail(_read(files.log), 4) or accel_probe.tail(console_tail(files.workdir, 2048), 4)
        return DriverError(
            Hop.DRIVER,
            f"QEMU exited with {proc.returncode} {what}: {said or 'no output'}",
            f"see {files.log} and {files.console}",
        )

    async def _connect_qmp(self, files: Files, proc: asyncio.subprocess.Process) -> None:
        """Until QMP answers query-status (QEMU is up), or fail fast when QEMU exits."""
        deadline = time.monotonic() + QMP_TIMEOUT
        delay = 0.01
        last = "socket not there yet"
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise self._exited(files, proc, "before QMP answered")
            if files.qmp.exists():
                qmp = QMPClient("hearth")
                try:
                    await asyncio.wait_for(qmp.connect(str(files.qmp)), 2.0)
                    status = await asyncio.wait_for(qmp.execute("query-status"), 2.0)
                    if isinstance(status, dict) and status.get("status") in ("running", "prelaunch"):
                        return
                    last = f"status {status!r}"
                except (QMPError, OSError, TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                finally:
                    with contextlib.suppress(Exception):
                        await qmp.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), delay)
            delay = min(delay * 2, 0.1)
        raise DriverError(Hop.DRIVER, f"QMP at {files.qmp} did not answer within {QMP_TIMEOUT:.0f}s ({last})", "")

    async def _wait_console(
        self, files: Files, proc: asyncio.subprocess.Process, marker: str, timeout: float
    ) -> list[str]:
        """Until `marker` appears on the serial console; fail fast on a panic, our init's FATAL, or QEMU's exit."""
        watch = ConsoleWatch(files.console)
        deadline = time.monotonic() + timeout
        while True:
            lines = await asyncio.to_thread(watch.poll)
            bad = fatal_line(lines)
            if bad is not None:
                raise DriverError(
                    Hop.DRIVER,
                    f"the guest failed to boot: {bad}",
                    f"see the console: {accel_probe.tail(chr(10).join(watch.seen[-12:]), 6)}",
                )
            if any(marker in ln for ln in lines):
                return watch.seen
            if proc.returncode is not None:
                raise self._exited(files, proc, "while the guest booted")
            if time.monotonic() > deadline:
                raise DriverError(
                    Hop.DRIVER,
                    f"the guest did not reach {marker!r} within {timeout:.0f}s ({self.accel})",
                    f"console: {accel_probe.tail(chr(10).join(watch.seen), 4) or 'empty'}",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)

    async def _stop(self, spec: SandboxSpec) -> None:
        """QMP quit, SIGKILL after QUIT_GRACE, and wait until QEMU is gone. Raises if it survives SIGKILL."""
        files = Files(spec.workdir)
        proc = self._procs.pop(spec.slot.netns, None)
        pid = proc.pid if proc is not None and proc.returncode is None else None
        if pid is None:
            pid = await asyncio.to_thread(find_qemu, files)
        if pid is None:
            if proc is not None:
                await proc.wait()
            return
        with pidfd.opened(pid) as fd:
            if fd is None or (proc is None and await asyncio.to_thread(find_qemu, files) != pid):
                if proc is not None:  # already gone (an exited child until reaped): success
                    await proc.wait()
                return  # the pid is no longer (or no longer our) QEMU: nothing to stop, never another process
            await self._quit_or_kill(spec, files, pid, fd, proc)

    async def _quit_or_kill(
        self, spec: SandboxSpec, files: Files, pid: int, fd: int, proc: asyncio.subprocess.Process | None
    ) -> None:
        """QMP quit, then SIGKILL through the pidfd `fd` (only ever this QEMU), and wait until it is gone."""
        if files.qmp.exists():
            qmp = QMPClient("hearth-stop")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(qmp.connect(str(files.qmp)), 1.0)
                await asyncio.wait_for(qmp.execute("quit"), 1.0)
            with contextlib.suppress(Exception):
                await qmp.disconnect()
        if await self._wait_gone(pid, proc, QUIT_GRACE):
            return
        pidfd.kill(fd, signal.SIGKILL)  # False: it exited meanwhile (success)
        if await self._wait_gone(pid, proc, KILL_WAIT):
            return
        raise DriverError(
            Hop.DRIVER,
            f"QEMU (pid {pid}) did not exit after SIGKILL; its TAP {spec.slot.tap_name} is kept",
            f"the process is stuck in the kernel (D state); check `cat /proc/{pid}/stack`",
        )

    async def _wait_gone(self, pid: int, proc: asyncio.subprocess.Process | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if proc is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.02)
                if proc.returncode is not None:
                    return True
            elif procs.is_zombie(pid):
                return True
            else:
                await asyncio.sleep(0.02)
            if time.monotonic() > deadline:
                return False

    async def destroy(self, spec: SandboxSpec) -> None:
        await self._stop(spec)
        await ports.remove_port(self.s, spec.slot.tap_name)  # no fabric (or no TAP) is success
        await asyncio.to_thread(shutil.rmtree, spec.workdir, True)

    async def alive(self, spec: SandboxSpec) -> bool:
        proc = self._procs.get(spec.slot.netns)
        if proc is not None:
            return proc.returncode is None
        return await asyncio.to_thread(find_qemu, Files(spec.workdir)) is not None


def _read(path: Path) -> str:
    try:
        return path.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return ""
