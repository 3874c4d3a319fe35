"""The guest image's recipe: named steps, run in order into a work directory (hearth/image/build.py's `ensure()`
creates that directory and removes it if any step fails, so a step needs no undo of its own).

Each step is a `Step(name, label, total, do)`: `name` keys the manifest's `timings`, `label` and `total` are what
the progress display shows, `do` acts on the shared `Build` (the work directory and what earlier steps found).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.guest import files as guest
from hearth.guest.layout import INITRD, KERNEL, ROOTFS_DIR, ROOTFS_EXT4, VMLINUX
from hearth.image import initramfs
from hearth.image.cache import MANIFEST
from hearth.image.spec import BUSYBOX_PACKAGE, FORBIDDEN_PACKAGES, INITRAMFS_MODULES, ImageSpec
from hearth.image.steps import APT_OPTS, BuildError, Progress, chroot, copy_agent, copy_clis, counter, du, run, trim
from hearth.image.steps import write as write_file
from hearth.image.vmlinux import extract_vmlinux

EXT4_HEADROOM = 768 << 20  # free space inside the guest's root fs (home, Chromium profile, /var)
NETWORK_UNITS = ("systemd-networkd.service", "systemd-networkd.socket", "NetworkManager.service", "networking.service")
_OPTS = " ".join(APT_OPTS)


@dataclass
class Build:
    """One build in progress: its inputs, and what each step found for the later ones and the manifest."""

    work: Path
    spec: ImageSpec
    progress: Progress
    mirror: str
    security_mirror: str
    kernel_package: str = ""
    kernel_version: str = ""
    vmlinuz: Path | None = None
    moddir: Path | None = None
    busybox: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)
    cli_versions: dict[str, str] = field(default_factory=dict)
    kernel: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.work / ROOTFS_DIR

    @property
    def extracted(self) -> Path:
        """Where the kernel and busybox packages are unpacked, inside the tree until the trim step removes it."""
        return self.root / "var/tmp/hearth-x"


@dataclass(frozen=True)
class Step:
    name: str
    label: str | Callable[[Build], str]
    do: Callable[[Build], None]
    total: float | None = None


def _debootstrap(b: Build) -> None:
    """The base system."""
    run(
        ["debootstrap", "--variant=minbase", b.spec.suite, str(b.root), b.mirror],
        "debootstrap",
        counter(b.progress, r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) "),
    )


def _apt_update(b: Build) -> None:
    """Package sources: the suite, its updates and security updates; no service starts, no second network manager."""
    root = b.root
    sources = (
        f"deb {b.mirror} {b.spec.suite} main\n"
        f"deb {b.mirror} {b.spec.suite}-updates main\n"
        f"deb {b.security_mirror} {b.spec.suite}-security main\n"
    )
    write_file(root, "etc/apt/sources.list", sources.encode(), 0o644)
    write_file(root, "usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n", 0o755)  # no service starts during the build
    pins = "".join(
        f"Package: {p}\nPin: release *\nPin-Priority: -1\n\n" for p in FORBIDDEN_PACKAGES
    )  # apt must never pick a second network manager (or systemd, which carries systemd-networkd)
    write_file(root, "etc/apt/preferences.d/hearth-no-network-managers", pins.encode(), 0o644)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    chroot(root, f"apt-get {_OPTS} update", "apt-get update")


def _apt_install(b: Build) -> None:
    chroot(
        b.root,
        f"apt-get {_OPTS} -y install {' '.join(b.spec.packages)}",
        "apt-get install",
        counter(b.progress, r"^(Unpacking|Setting up) ", r"(\d+) newly installed"),
    )


def _kernel_download(b: Build) -> None:
    """The kernel and busybox: downloaded and unpacked beside the root fs, never installed into it."""
    root = b.root
    deps = chroot(root, f"apt-cache depends --no-recommends --no-suggests {b.spec.kernel_package}", "apt-cache depends")
    m = re.search(r"Depends:\s*(linux-image-[^\s<>]+)", deps)
    if not m:
        raise BuildError(f"cannot resolve {b.spec.kernel_package} to a kernel package:\n{deps}")
    kpkg = m.group(1)
    chroot(
        root,
        "rm -rf /var/tmp/hearth-debs /var/tmp/hearth-x && mkdir -p /var/tmp/hearth-debs /var/tmp/hearth-x && "
        "chown _apt /var/tmp/hearth-debs && cd /var/tmp/hearth-debs && "
        f"apt-get {_OPTS} download {kpkg} {BUSYBOX_PACKAGE} && "
        'for d in *.deb; do dpkg-deb -x "$d" "/var/tmp/hearth-x/${d%%_*}"; done && '
        "dpkg-deb -f " + kpkg + "_*.deb Version > /var/tmp/hearth-x/kernel.version",
        "download kernel",
    )
    kroot = b.extracted / kpkg
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
    moddirs = sorted((kroot / "lib/modules").glob("*"))
    if not vmlinuz or not moddirs:
        raise BuildError(f"{kpkg} holds no /boot/vmlinuz-* or /lib/modules/*")
    busybox = b.extracted / BUSYBOX_PACKAGE / "bin/busybox"
    if not busybox.is_file():
        raise BuildError(f"{BUSYBOX_PACKAGE} holds no /bin/busybox")
    b.kernel_package = kpkg
    b.kernel_version = (b.extracted / "kernel.version").read_text().strip()
    b.vmlinuz, b.moddir, b.busybox = vmlinuz[-1], moddirs[-1], busybox


def _configure(b: Build) -> None:
    """The guest: user, init, agent, CLIs; nothing else configures the network."""
    root = b.root
    chroot(
        root,
        f"useradd --uid {guest.GUEST_UID} --user-group --create-home --home-dir /home/{guest.GUEST_USER} "
        f"--shell /usr/sbin/nologin {guest.GUEST_USER}",
        "useradd",
    )
    for path, data in guest.rootfs_files().items():
        write_file(root, path, data, 0o755 if path == guest.INIT_PATH else 0o644)
    init_link = root / "sbin/init"
    if init_link.is_symlink() or not init_link.exists():
        with contextlib.suppress(FileNotFoundError):
            init_link.unlink()
        init_link.symlink_to("hearth-init")  # kernels booted without init= (or without our initramfs) land here
    copy_agent(root, b.spec)
    b.cli_versions = copy_clis(root)
    chroot(root, "python3 -m compileall -q /opt/hearth >/dev/null", "compile the agent")
    write_file(root, "etc/hostname", b"hearth\n", 0o644)
    write_file(root, "etc/hosts", b"127.0.0.1\tlocalhost\n127.0.1.1\thearth\n::1\tlocalhost ip6-localhost\n", 0o644)
    write_file(root, "etc/resolv.conf", b"", 0o644)
    write_file(root, "etc/machine-id", b"", 0o444)
    for unit in NETWORK_UNITS:  # mask if any package brought one (none should: see the check below)
        if (root / "lib/systemd/system" / unit).exists():
            masked = root / "etc/systemd/system" / unit
            masked.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                masked.unlink()
            masked.symlink_to("/dev/null")
    with contextlib.suppress(FileNotFoundError):
        (root / "etc/network/interfaces").unlink()
    installed = chroot(root, "dpkg-query -W -f '${Package}\\t${Version}\\n'", "dpkg-query")
    b.versions = dict(line.split("\t", 1) for line in installed.splitlines() if "\t" in line)
    bad = sorted(set(b.versions) & set(FORBIDDEN_PACKAGES))
    if bad:
        raise BuildError(f"the image would contain {', '.join(bad)}, a second way to configure eth0")


def _kernel(b: Build) -> None:
    """The kernel (bzImage), its uncompressed ELF (vmlinux) and the initramfs."""
    assert b.vmlinuz is not None and b.moddir is not None and b.busybox is not None  # _kernel_download ran
    work = b.work
    shutil.copyfile(b.vmlinuz, work / KERNEL)
    elf, compression = extract_vmlinux((work / KERNEL).read_bytes())
    (work / VMLINUX).write_bytes(elf)
    initrd, mods = initramfs.build(b.moddir, b.busybox, INITRAMFS_MODULES)
    (work / INITRD).write_bytes(initrd)
    for name in (KERNEL, VMLINUX, INITRD):
        os.chmod(work / name, 0o644)
    b.kernel = {
        "package": b.kernel_package,
        "version": b.kernel_version,
        "release": b.moddir.name,
        "compression": compression,
        "initramfs_modules": [name for name, _ in mods.ordered],
        "builtin": list(mods.builtin),
    }


def _ext4(b: Build) -> None:
    """Trim the tree, then its ext4 image (sized to the tree plus headroom, in 64 MiB steps)."""
    root, work = b.root, b.work
    shutil.rmtree(b.extracted)
    (root / "usr/sbin/policy-rc.d").unlink()
    trim(root)
    os.chmod(root, 0o755)
    used = du(root)
    size = ((used * 5 // 4 + EXT4_HEADROOM) + (64 << 20) - 1) // (64 << 20) * (64 << 20)
    ext4 = work / ROOTFS_EXT4
    with open(ext4, "wb") as f:
        f.truncate(size)
    run(
        [
            "mkfs.ext4", "-q", "-F", "-L", "hearth-root", "-m", "0", "-O", "^has_journal",
            "-E", "lazy_itable_init=0,root_owner=0:0", "-d", str(root), str(ext4),
        ],
        "mkfs.ext4",
    )  # fmt: skip
    os.chmod(ext4, 0o644)
    b.sizes = {
        "rootfs_dir": used,
        "rootfs_ext4": size,
        "rootfs_ext4_allocated": os.stat(ext4).st_blocks * 512,
        "kernel": os.stat(work / KERNEL).st_size,
        "vmlinux": os.stat(work / VMLINUX).st_size,
        "initrd": os.stat(work / INITRD).st_size,
    }


STEPS: tuple[Step, ...] = (
    Step("debootstrap", "debootstrap (minbase)", _debootstrap, 330),
    Step("apt_update", "apt-get update", _apt_update),
    Step(
        "apt_install",
        lambda b: f"apt-get install ({len(b.spec.packages)} packages and their dependencies)",
        _apt_install,
        500,
    ),
    Step("kernel_download", "kernel and busybox packages", _kernel_download),
    Step("configure", "guest configuration", _configure),
    Step("kernel", "kernel, vmlinux, initramfs", _kernel),
    Step("ext4", "trim and ext4 image", _ext4),
)


def build(work: Path, spec: ImageSpec, progress: Progress, mirror: str, security_mirror: str) -> dict[str, Any]:
    """Run every step into `work` (an empty directory), then write the manifest, last; returns it."""
    t0 = time.monotonic()
    b = Build(work, spec, progress, mirror, security_mirror)
    timings: dict[str, float] = {}
    for step in STEPS:
        progress.stage(step.label(b) if callable(step.label) else step.label, step.total)
        started = time.monotonic()
        step.do(b)
        timings[step.name] = round(time.monotonic() - started, 1)
    manifest: dict[str, Any] = {
        "hash": spec.hash,
        "inputs": spec.inputs(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t0, 1),
        "timings": timings,
        "kernel": b.kernel,
        "versions": {p: b.versions[p] for p in (*spec.packages, "python3.11") if p in b.versions} | b.cli_versions,
        "sizes": b.sizes,
        "files": {
            "kernel": KERNEL,
            "vmlinux": VMLINUX,
            "initrd": INITRD,
            "rootfs": ROOTFS_EXT4,
            "rootfs_dir": ROOTFS_DIR,
        },
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(work / MANIFEST, 0o644)
    progress.stage("done")
    return manifest
