"""What goes into the guest image, and its content hash (pure).

The hash covers every input that changes the image's content: the Debian suite, the package list, the kernel
package, whether Chromium is in, the build script version, the guest files hearth writes into the image (init,
initramfs init, boot script) and every file of the guest packages (`hearth_agent`, `hearth_example`). The mirror is
not an input (any mirror serves the same suite). Package *versions* are not pinned by the hash — Debian's stable
suite only takes security fixes; `hearth image build --force` rebuilds with the current ones, and the manifest
records what was installed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Bump when the build steps change the image in a way the other inputs do not capture.
BUILD_VERSION = 1

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

# Userspace of every sandbox (all drivers): the desktop, the agent's interpreter, the guest's one network tool.
BASE_PACKAGES: tuple[str, ...] = (
    "python3",  # Debian's 3.11; the agent is stdlib-only
    "tigervnc-standalone-server",  # Xvnc: the X display and the VNC server in one process (the default)
    "xvfb",  # with x11vnc: the previous desktop, HEARTH_VNC_SERVER=x11vnc
    "openbox",
    "x11vnc",
    "fonts-dejavu-core",
    "iproute2",  # hearth-init applies the kernel's ip= argument with `ip`
    "dbus-x11",  # provides dbus-session-bus (dconf, via chromium), which would otherwise pull in systemd
)
CHROMIUM_PACKAGES: tuple[str, ...] = ("chromium",)

# Never in the image: each would configure eth0 a second way (the seed system ran three at once).
FORBIDDEN_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "ifupdown",
    "network-manager",
    "netplan.io",
    "isc-dhcp-client",
    "dhcpcd-base",
    "udhcpc",
    "connman",
)

# Modules the initramfs loads (with their dependencies): virtio over PCI (QEMU q35) and MMIO (Firecracker,
# QEMU microvm), the root and config disks, the network device. ext4 is built into Debian's cloud kernel; it is
# listed so a kernel that has it as a module still boots.
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "ext4")

GUEST_PACKAGES: tuple[str, ...] = ("hearth_agent", "pyte", "wcwidth")  # + hearth_example in images for tests


@dataclass(frozen=True)
class ImageSpec:
    """The inputs of one image build."""

    chromium: bool = True
    suite: str = SUITE
    kernel_package: str = KERNEL_PACKAGE
    extra_packages: tuple[str, ...] = ()
    build_version: int = BUILD_VERSION
    guest_files: dict[str, str] = field(default_factory=dict)  # image path → content digest (init scripts …)
    agent_files: dict[str, str] = field(default_factory=dict)  # path under /opt/hearth → content digest
    clis: str = ""  # lock hash of clis/package-lock.json (Node + provider CLIs at /opt/hearth-clis)

    @property
    def packages(self) -> tuple[str, ...]:
        pkgs = list(BASE_PACKAGES)
        if self.chromium:
            pkgs += CHROMIUM_PACKAGES
        pkgs += [p for p in self.extra_packages if p not in pkgs]
        return tuple(pkgs)

    def inputs(self) -> dict[str, Any]:
        """Every input, JSON-ready, in a canonical form (what the hash is taken over)."""
        return {
            "build_version": self.build_version,
            "suite": self.suite,
            "variant": "minbase",
            "packages": sorted(self.packages),
            "kernel_package": self.kernel_package,
            "busybox_package": BUSYBOX_PACKAGE,
            "initramfs_modules": list(INITRAMFS_MODULES),
            "chromium": self.chromium,
            "guest_files": dict(sorted(self.guest_files.items())),
            "agent_files": dict(sorted(self.agent_files.items())),
            "clis": self.clis,
        }

    @property
    def hash(self) -> str:
        """Content address of the image: 16 hex digits of SHA-256 over the canonical inputs."""
        return content_hash(self.inputs())


def content_hash(inputs: dict[str, Any]) -> str:
    raw = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digests(root: Path, prefix: str) -> dict[str, str]:
    """`prefix/relative path` → SHA-256 of every regular file under `root` (caches and bytecode skipped)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or not path.is_file():
            continue
        out[f"{prefix}/{path.relative_to(root).as_posix()}"] = digest(path.read_bytes())
    return out
