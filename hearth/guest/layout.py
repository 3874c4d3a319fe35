"""The image layout — the one place that knows the file names of a built guest image (in the image cache and under
HEARTH_IMAGE_DIR, `Settings.images`): one kernel, one initramfs, one ext4 root filesystem for the VM drivers, and the
unpacked root tree the namespace driver runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KERNEL = "bzImage"
VMLINUX = "vmlinux"
INITRD = "initrd.img"
ROOTFS_EXT4 = "rootfs.ext4"
ROOTFS_DIR = "rootfs"


@dataclass(frozen=True)
class GuestImage:
    """Paths of a built image (see `hearth image build`). `vmlinux` is the uncompressed kernel Firecracker needs;
    `kernel` the bzImage QEMU boots; `rootfs_dir` the unpacked tree the namespace driver runs."""

    kernel: Path
    initrd: Path | None
    rootfs: Path
    vmlinux: Path | None = None
    rootfs_dir: Path | None = None

    @classmethod
    def at(cls, path: Path, present_only: bool = False) -> GuestImage:
        """The image in directory `path` (a cache entry, or HEARTH_IMAGE_DIR); `present_only`: optional parts
        (initrd, the unpacked root tree) only when they exist."""
        initrd, tree = path / INITRD, path / ROOTFS_DIR
        return cls(
            kernel=path / KERNEL,
            initrd=initrd if not present_only or initrd.exists() else None,
            rootfs=path / ROOTFS_EXT4,
            vmlinux=path / VMLINUX,
            rootfs_dir=tree if not present_only or tree.is_dir() else None,
        )
