"""Pure planning for one Firecracker sandbox: file layout, launch command and the ordered API calls.

Compute, then act: nothing here touches the host. `hearth sandbox plan --driver firecracker --json` prints exactly
what `FirecrackerDriver.start` will do, and the tests validate every body against Firecracker's OpenAPI spec.

Decisions recorded here (see docs/firecracker.md):

* **Secret delivery — a config drive, not the kernel command line.** `/proc/cmdline` is mode 0444 in the guest
  (readable by the desktop user, not only by root), and Firecracker logs every PUT body — `boot_args` included —
  at level Info into its log file on the host. So the per-sandbox secret (and the desktop settings) travel in a
  small raw, read-only virtio-block device (`drive_id` "config", `/dev/vdb` in the guest; the root device is always
  attached first): `HEARTHCFG1\\n` + one JSON object + `\\n`, NUL-padded to a multiple of 4 KiB. The device node is
  root-only in the guest; on the host the file is 0600 in the 0700 sandbox directory; Firecracker logs only its
  path. The command line carries `hearth.config=/dev/vdb` (no secret) so the guest knows where to look.
* **Guest network — one mechanism only:** the kernel `ip=` argument derived from the slot (address, gateway and
  the netmask of INTERNAL_NETWORK), nothing in the config drive.
* **Root filesystem — a per-sandbox copy-on-write copy.** Firecracker has no qcow2. The golden `rootfs.ext4` is
  cloned with FICLONE (a reflink: O(1), shares blocks, on XFS/btrfs) and, where the filesystem cannot reflink
  (ext4), copied sparsely (`cp --sparse=always`: cost = the image's used blocks). A device-mapper snapshot would be
  O(1) on any filesystem but leaks loop devices and dm tables on crashes; the file copy is deleted with the
  sandbox directory and needs nothing to reclaim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hearth.errors import ConfigError
from hearth.guest import configdrive
from hearth.guest.layout import GuestImage
from hearth.sandbox.base import SandboxSpec

LogLevel = Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"]

# File names inside the directory Firecracker sees (the workdir, or the jail's root).
SOCKET = "fc.sock"
ROOTFS = "rootfs.ext4"
CONFIG_DRIVE = "config.img"
LOG = "firecracker.log"
METRICS = "metrics.json"
KERNEL = "vmlinux"  # jailed only: the kernel linked into the jail
INITRD = "initrd.img"  # jailed only
CONSOLE = "console.log"  # always in the workdir: firecracker's stdout/stderr = the guest's serial console

ROOT_DRIVE_ID = "rootfs"
CONFIG_DRIVE_ID = "config"
CONFIG_DEVICE = "/dev/vdb"
IFACE_ID = "eth0"
NETNS_DIR = Path("/run/netns")
DEFAULT_CALLBACK_PORT = 8700

BASE_BOOT_ARGS = (
    "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw rootfstype=ext4 "
    "net.ifnames=0 biosdevname=0 random.trust_cpu=on"
)

SUN_PATH_MAX = 107  # bytes of a Unix socket path (sockaddr_un.sun_path is 108 with the NUL)
MIN_MEM_MIB = 512  # the system hearth replaces ran Chromium guests at 256 MiB and they were OOM-killed
MAX_VCPUS = 32  # Firecracker's limit (machine-config: vcpu_count in [1, 32])
_JAIL_ID_BAD = re.compile(r"[^A-Za-z0-9-]")


@dataclass(frozen=True)
class MachineShape:
    """vCPUs and memory of one microVM. `vcpus` is a whole number: Firecracker has no fractional vCPUs."""

    vcpus: int = 2
    mem_mib: int = 2048
    smt: bool = False

    def problems(self) -> list[str]:
        out = []
        v = self.vcpus
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VCPUS:
            out.append(
                f"HEARTH_VM_VCPUS={v!r} is not a whole number of vCPUs in 1..{MAX_VCPUS}; Firecracker has no "
                "fractional vCPUs (the seed's 0.5 broke every boot): use e.g. 2"
            )
        elif self.smt and v > 1 and v % 2:
            out.append(f"HEARTH_VM_VCPUS={v} is odd with SMT on; Firecracker then needs 1 or an even count")
        m = self.mem_mib
        if isinstance(m, bool) or not isinstance(m, int) or m < MIN_MEM_MIB:
            out.append(
                f"HEARTH_VM_MEM_MIB={m!r} must be a whole number of MiB ≥ {MIN_MEM_MIB} "
                "(browser guests are OOM-killed below that); use e.g. 2048"
            )
        return out

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class JailerConfig:
    """Run Firecracker through the `jailer` (chroot, new mount namespace, uid/gid drop, optional cgroups).

    `chroot_base_dir=None` puts the jail inside the sandbox's own workdir (`<workdir>/jail`), so removing the
    workdir removes the jail; the jail is `<chroot_base_dir>/<basename of the firecracker binary>/<vm id>/root`.
    """

    binary: str = "jailer"
    uid: int = 65534
    gid: int = 65534
    chroot_base_dir: Path | None = None
    cgroup_version: Literal[1, 2] | None = None
    cgroups: tuple[str, ...] = ()  # e.g. ("cpu.max=200000 100000",)
    resource_limits: tuple[str, ...] = ()  # e.g. ("no-file=1024",)


@dataclass(frozen=True)
class ApiCall:
    method: str
    path: str
    body: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "body": self.body}


@dataclass(frozen=True)
class Layout:
    """Where one sandbox's files live on the host and the paths Firecracker is given for them.

    Unjailed, `root` is the workdir and API paths are absolute host paths. Jailed, `root` is the jail's chroot and
    API paths are relative to it (`/rootfs.ext4`); the jailer itself moves nothing but its own copy of the binary:
    the driver links or copies the kernel, initrd, disks and log file into `root` before launching it.
    """

    workdir: Path
    root: Path
    vm_id: str
    jail_dir: Path | None = None  # <chroot base>/<exec name>/<vm id>, removed on destroy (jailed only)
    kernel_src: Path = Path()
    initrd_src: Path | None = None
    rootfs_src: Path = Path()

    @property
    def jailed(self) -> bool:
        return self.jail_dir is not None

    def host(self, name: str) -> Path:
        return self.root / name

    def api(self, name: str) -> str:
        return f"/{name}" if self.jailed else str(self.root / name)

    @property
    def api_socket(self) -> Path:
        """The API socket on the host (inside the jail when jailed)."""
        return self.host(SOCKET)

    @property
    def console_log(self) -> Path:
        return self.workdir / CONSOLE

    @property
    def kernel_api(self) -> str:
        return self.api(KERNEL) if self.jailed else str(self.kernel_src)

    @property
    def initrd_api(self) -> str | None:
        if self.initrd_src is None:
            return None
        return self.api(INITRD) if self.jailed else str(self.initrd_src)


@dataclass(frozen=True)
class Plan:
    layout: Layout
    argv: tuple[str, ...]
    calls: tuple[ApiCall, ...]
    config_drive: bytes = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the config drive's content (it holds the secret) is never included."""
        return {
            "driver": "firecracker",
            "vm_id": self.layout.vm_id,
            "workdir": str(self.layout.workdir),
            "root": str(self.layout.root),
            "jailed": self.layout.jailed,
            "api_socket": str(self.layout.api_socket),
            "argv": list(self.argv),
            "files": {
                "rootfs": {"from": str(self.layout.rootfs_src), "to": str(self.layout.host(ROOTFS))},
                "config_drive": {"to": str(self.layout.host(CONFIG_DRIVE)), "bytes": len(self.config_drive)},
                "log": str(self.layout.host(LOG)),
                "console": str(self.layout.console_log),
            },
            "calls": [c.as_dict() for c in self.calls],
        }


def vm_id(spec: SandboxSpec) -> str:
    """Firecracker/jailer instance id: derived from the slot (alphanumerics and hyphens, ≤ 64 characters)."""
    return _JAIL_ID_BAD.sub("-", spec.slot.netns)[:64]


def kernel_of(image: GuestImage) -> Path:
    """Firecracker boots the uncompressed ELF `vmlinux`; images built for QEMU may carry it next to a bzImage."""
    return image.vmlinux or image.kernel


def layout_for(spec: SandboxSpec, image: GuestImage, jailer: JailerConfig | None, exec_name: str) -> Layout:
    """Paths of one sandbox. `exec_name` is the basename of the firecracker binary (the jailer's path component)."""
    ident = vm_id(spec)
    jail_dir: Path | None = None
    root = spec.workdir
    if jailer is not None:
        base = jailer.chroot_base_dir if jailer.chroot_base_dir is not None else spec.workdir / "jail"
        jail_dir = base.absolute() / exec_name / ident
        root = jail_dir / "root"
    return Layout(
        workdir=spec.workdir,
        root=root,
        vm_id=ident,
        jail_dir=jail_dir,
        kernel_src=kernel_of(image).absolute(),
        initrd_src=image.initrd.absolute() if image.initrd else None,
        rootfs_src=image.rootfs.absolute(),
    )


def socket_path_problem(layout: Layout) -> str | None:
    """Unix socket paths are limited to 107 bytes; a deep HEARTH_DATA_DIR (or jail) can exceed that."""
    n = len(str(layout.api_socket).encode())
    if n <= SUN_PATH_MAX:
        return None
    return (
        f"the API socket path {layout.api_socket} is {n} bytes, over the {SUN_PATH_MAX}-byte limit of Unix socket paths"
    )


def boot_args(spec: SandboxSpec, extra: str = "") -> str:
    """Kernel command line: fixed arguments, where the config drive is, and the guest's one network setting."""
    parts = [BASE_BOOT_ARGS, f"hearth.config={CONFIG_DEVICE}", spec.slot.kernel_ip_arg]
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


def config_drive(spec: SandboxSpec, callback_port: int = DEFAULT_CALLBACK_PORT) -> bytes:
    """The config drive's bytes: one format for every VM driver (`hearth.guest.configdrive`)."""
    return configdrive.encode(configdrive.document(spec, callback_port))


def read_config_drive(data: bytes) -> dict[str, Any]:
    """Inverse of `config_drive` (what the guest does with `/dev/vdb`)."""
    return configdrive.decode(data)


def api_calls(
    spec: SandboxSpec,
    layout: Layout,
    machine: MachineShape,
    *,
    log_level: LogLevel = "Info",
    metrics: bool = False,
    extra_boot_args: str = "",
) -> tuple[ApiCall, ...]:
    """The exact ordered API calls that configure and boot one microVM; InstanceStart is last."""
    machine.check()
    calls = [ApiCall("PUT", "/logger", {"log_path": layout.api(LOG), "level": log_level, "show_level": True})]
    if metrics:
        calls.append(ApiCall("PUT", "/metrics", {"metrics_path": layout.api(METRICS)}))
    boot: dict[str, Any] = {"kernel_image_path": layout.kernel_api, "boot_args": boot_args(spec, extra_boot_args)}
    if layout.initrd_api is not None:
        boot["initrd_path"] = layout.initrd_api
    calls += [
        ApiCall("PUT", "/boot-source", boot),
        ApiCall(
            "PUT",
            f"/drives/{ROOT_DRIVE_ID}",
            {
                "drive_id": ROOT_DRIVE_ID,
                "path_on_host": layout.api(ROOTFS),
                "is_root_device": True,
                "is_read_only": False,
            },
        ),
        ApiCall(
            "PUT",
            f"/drives/{CONFIG_DRIVE_ID}",
            {
                "drive_id": CONFIG_DRIVE_ID,
                "path_on_host": layout.api(CONFIG_DRIVE),
                "is_root_device": False,
                "is_read_only": True,
            },
        ),
        ApiCall(
            "PUT",
            f"/network-interfaces/{IFACE_ID}",
            {"iface_id": IFACE_ID, "host_dev_name": spec.slot.tap_name, "guest_mac": spec.slot.mac},
        ),
        ApiCall(
            "PUT",
            "/machine-config",
            {"vcpu_count": machine.vcpus, "mem_size_mib": machine.mem_mib, "smt": machine.smt},
        ),
        ApiCall("PUT", "/actions", {"action_type": "InstanceStart"}),
    ]
    return tuple(calls)


def launch_argv(
    fabric_netns: str, layout: Layout, binary: str, jailer: JailerConfig | None, jailer_binary: str | None = None
) -> tuple[str, ...]:
    """The command that starts the VMM inside the fabric namespace (where its TAP is).

    Unjailed: `nsenter --net=/run/netns/<fabric> -- <firecracker> --id <vm id> --api-sock <workdir>/fc.sock`
    (nsenter execs, so the pid we get is firecracker's). Jailed: the jailer joins the namespace itself
    (`--netns`), chroots, drops to uid/gid and execs firecracker with the same pid (no `--daemonize`: we already
    start it in its own session; no `--new-pid-ns`: the pid must stay firecracker's).
    """
    netns_path = str(NETNS_DIR / fabric_netns)
    if jailer is None:
        return (
            "nsenter",
            f"--net={netns_path}",
            "--",
            binary,
            "--id",
            layout.vm_id,
            "--api-sock",
            str(layout.api_socket),
        )
    assert layout.jail_dir is not None
    argv = [
        jailer_binary or jailer.binary,
        "--id",
        layout.vm_id,
        "--exec-file",
        binary,
        "--uid",
        str(jailer.uid),
        "--gid",
        str(jailer.gid),
        "--chroot-base-dir",
        str(layout.jail_dir.parent.parent),
        "--netns",
        netns_path,
    ]
    if jailer.cgroup_version is not None:
        argv += ["--cgroup-version", str(jailer.cgroup_version)]
    for cg in jailer.cgroups:
        argv += ["--cgroup", cg]
    for rl in jailer.resource_limits:
        argv += ["--resource-limit", rl]
    argv += ["--", "--api-sock", layout.api(SOCKET)]
    return tuple(argv)


def plan(
    spec: SandboxSpec,
    image: GuestImage,
    fabric_netns: str,
    machine: MachineShape,
    *,
    binary: str = "firecracker",
    jailer: JailerConfig | None = None,
    jailer_binary: str | None = None,
    log_level: LogLevel = "Info",
    metrics: bool = False,
    extra_boot_args: str = "",
    callback_port: int = DEFAULT_CALLBACK_PORT,
) -> Plan:
    """Everything `FirecrackerDriver.start` will do for `spec`, computed without touching the host. The agent's
    callback URL uses `callback_port` (HEARTH_CALLBACK_PORT)."""
    layout = layout_for(spec, image, jailer, Path(binary).name)
    return Plan(
        layout=layout,
        argv=launch_argv(fabric_netns, layout, binary, jailer, jailer_binary),
        calls=api_calls(spec, layout, machine, log_level=log_level, metrics=metrics, extra_boot_args=extra_boot_args),
        config_drive=config_drive(spec, callback_port),
    )


def is_vmm_cmdline(argv: list[str], api_socket: str, ident: str) -> bool:
    """Whether a process's argv is this sandbox's VMM (nsenter/jailer before exec, or firecracker after).

    Every process hearth starts carries `--api-sock`; it is ours for this slot when it also names this slot's
    socket (unjailed) or this slot's instance id (`--id X` / `--id=X`; the jailer passes the latter).
    """
    if not any(a == "--api-sock" or a.startswith("--api-sock=") for a in argv):
        return False
    for i, a in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if (a == "--api-sock" and nxt == api_socket) or a == f"--api-sock={api_socket}":
            return True
        if (a == "--id" and nxt == ident) or a == f"--id={ident}":
            return True
    return False
