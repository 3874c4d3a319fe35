"""The guest image shared by every VM driver: one kernel, one initramfs, one ext4 root filesystem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GuestImage:
    """Paths of a built image (see `hearth image build`). `vmlinux` is the uncompressed kernel Firecracker needs;
    `kernel` the bzImage QEMU boots; `rootfs_dir` the unpacked tree the namespace driver runs."""

    kernel: Path
    initrd: Path | None
    rootfs: Path
    vmlinux: Path | None = None
    rootfs_dir: Path | None = None
