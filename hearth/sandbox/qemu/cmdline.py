"""Pure planning for one QEMU sandbox: its files and the exact command line (compute, then act).

KVM that really works → `-M microvm` (virtio-mmio devices, found by the guest through ACPI); otherwise
`-M q35 -accel tcg` (virtio-pci). Either way: the image's kernel and initramfs, a per-sandbox qcow2 overlay on the
golden ext4 as /dev/vda, the config drive as /dev/vdb, one virtio-net on the slot's TAP, the serial console into
`console.log`, QMP on a Unix socket, a pidfile — all in the sandbox's workdir, so `destroy` needs only the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hearth.guest import configdrive
from hearth.guest import files as guest
from hearth.guest.layout import GuestImage
from hearth.sandbox.base import SandboxSpec

Accel = Literal["kvm", "tcg"]
NETNS_DIR = Path("/run/netns")

BASE_APPEND = "console=ttyS0 panic=1 root=/dev/vda rw rootfstype=ext4 net.ifnames=0 biosdevname=0 random.trust_cpu=on 8250.nr_uarts=1"


@dataclass(frozen=True)
class Files:
    """Where one sandbox's QEMU files live (all inside its workdir)."""

    workdir: Path

    @property
    def overlay(self) -> Path:
        return self.workdir / "root.qcow2"

    @property
    def config(self) -> Path:
        return self.workdir / "config.img"

    @property
    def qmp(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "qemu.pid"

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    @property
    def log(self) -> Path:
        """QEMU's own stdout/stderr (its errors; the guest's console is `console`)."""
        return self.workdir / "qemu.log"


@dataclass(frozen=True)
class Machine:
    accel: Accel
    vcpus: int = 2
    mem_mib: int = 2048


def kernel_append(spec: SandboxSpec, extra: str = "") -> str:
    """Kernel command line: fixed arguments, our init, where the config drive is, and the one network setting."""
    parts = [
        BASE_APPEND,
        f"init={guest.INIT_PATH}",
        f"hearth.config={configdrive.DEVICE}",
        spec.slot.kernel_ip_arg,
    ]
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


def overlay_argv(image: GuestImage, files: Files, qemu_img: str = "qemu-img") -> list[str]:
    """`qemu-img create`: the per-sandbox copy-on-write disk over the golden ext4 (never a full copy)."""
    return [
        qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.rootfs.absolute()),
        "-o", "cluster_size=65536,lazy_refcounts=on", str(files.overlay),
    ]  # fmt: skip


def argv(
    spec: SandboxSpec,
    image: GuestImage,
    machine: Machine,
    fabric_netns: str,
    *,
    binary: str = "qemu-system-x86_64",
    runas: str | None = None,
    extra_append: str = "",
) -> list[str]:
    """The command that starts the VM inside the fabric namespace (where its TAP is).

    `nsenter` execs QEMU, so the pid we spawn is QEMU's. QEMU opens every file and the TAP as root, then drops to
    `runas` (and enables its seccomp sandbox) before the guest runs.
    """
    files = Files(spec.workdir)
    kvm = machine.accel == "kvm"
    bus = "device" if kvm else "pci"  # virtio-mmio on microvm, virtio-pci on q35
    out = [
        "nsenter", f"--net={NETNS_DIR / fabric_netns}", "--",
        binary,
        "-name", f"hearth-{spec.slot.netns},debug-threads=on",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    ]  # fmt: skip
    if kvm:
        out += ["-machine", "microvm,acpi=on,x-option-roms=off,pit=off,pic=off,rtc=on", "-accel", "kvm", "-cpu", "host"]
    else:
        out += ["-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"]
    out += [
        "-m", str(machine.mem_mib), "-smp", str(machine.vcpus),
        "-kernel", str(image.kernel.absolute()),
        "-append", kernel_append(spec, extra_append),
    ]  # fmt: skip
    if image.initrd is not None:
        out += ["-initrd", str(image.initrd.absolute())]
    out += [
        "-drive", f"if=none,id=root,file={files.overlay},format=qcow2,cache=unsafe,discard=unmap",
        "-device", f"virtio-blk-{bus},drive=root",
        "-drive", f"if=none,id=config,file={files.config},format=raw,readonly=on",
        "-device", f"virtio-blk-{bus},drive=config",
        "-netdev", f"tap,id=n0,ifname={spec.slot.tap_name},script=no,downscript=no,vhost=off",
        "-device", f"virtio-net-{bus},netdev=n0,mac={spec.slot.mac}",
        "-chardev", f"file,id=console,path={files.console}",
        "-serial", "chardev:console",
        "-qmp", f"unix:{files.qmp},server=on,wait=off",
        "-pidfile", str(files.pidfile),
        "-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny",  # set*id stays: -runas drops after
    ]  # fmt: skip
    if runas:
        out += ["-runas", runas]
    return out


def probe_argv(image: GuestImage, accel: Accel, console: Path, binary: str = "qemu-system-x86_64") -> list[str]:
    """A tiny boot of the real kernel and initramfs that stops as soon as the root disk appeared (no network)."""
    kvm = accel == "kvm"
    bus = "device" if kvm else "pci"
    machine = (
        ["-machine", "microvm,acpi=on,x-option-roms=off,pit=off,pic=off,rtc=on", "-accel", "kvm", "-cpu", "host"]
        if kvm
        else ["-machine", "q35", "-accel", "tcg", "-cpu", "max"]
    )
    out = [
        binary,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        *machine,
        "-m",
        "256",
        "-smp",
        "1",
    ]
    out += ["-kernel", str(image.kernel.absolute())]
    if image.initrd is not None:
        out += ["-initrd", str(image.initrd.absolute())]
    out += [
        "-append", f"console=ttyS0 panic=1 root=/dev/vda ro hearth.probe={accel}",
        "-drive", f"if=none,id=root,file={image.rootfs.absolute()},format=raw,readonly=on",
        "-device", f"virtio-blk-{bus},drive=root",
        "-chardev", f"file,id=console,path={console}",
        "-serial", "chardev:console",
    ]  # fmt: skip
    return out
