"""Per-sandbox files: the copy-on-write root filesystem, the config drive, files linked into a jail."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import shutil
from pathlib import Path

from hearth.childproc import signal_child
from hearth.errors import DriverError, Hop

FICLONE = 0x40049409  # _IOW(0x94, 9, int): share all blocks of another file (XFS with reflink, btrfs, bcachefs)
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


def reflink(src: Path, dst: Path, mode: int = 0o600) -> bool:
    """Clone `src` to a new `dst` sharing its blocks; False (and no `dst`) where the filesystem cannot."""
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            fcntl.ioctl(fd, FICLONE, s.fileno())
        except OSError as exc:
            os.close(fd)
            dst.unlink(missing_ok=True)
            if exc.errno in _NO_REFLINK:
                return False
            raise
        os.close(fd)
    return True


async def sparse_copy(src: Path, dst: Path, mode: int = 0o600) -> None:
    """`cp --sparse=always` (holes stay holes); the cp process is killed if we are cancelled."""
    proc = await asyncio.create_subprocess_exec(
        "cp",
        "--reflink=never",
        "--sparse=always",
        "--no-preserve=all",
        "--",
        str(src),
        str(dst),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:
        signal_child(proc)
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise DriverError(
            Hop.DRIVER,
            f"copying the root filesystem {src} → {dst} failed: {err.decode(errors='replace').strip()}",
            "check free space in HEARTH_DATA_DIR (or put it on XFS/btrfs so copies are reflinks)",
        )
    os.chmod(dst, mode)


async def clone_rootfs(src: Path, dst: Path) -> str:
    """The sandbox's own writable copy of the golden root filesystem; returns "reflink" or "sparse-copy"."""
    try:
        if await asyncio.to_thread(reflink, src, dst):
            return "reflink"
    except OSError as exc:
        raise DriverError(
            Hop.DRIVER, f"cannot clone the root filesystem {src}: {exc}", "check HEARTH_IMAGE_DIR and free space"
        ) from exc
    await sparse_copy(src, dst)
    return "sparse-copy"


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` (must not exist) with `mode` from the start and write `data`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def touch_private(path: Path, mode: int = 0o600) -> None:
    """Precreate a file Firecracker appends to (its logger and metrics open existing files)."""
    write_private(path, b"", mode)


def link_or_copy(src: Path, dst: Path) -> None:
    """Put a read-only input (kernel, initrd) into a jail: a hard link, or a copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        if not reflink(src, dst, 0o644):
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644)


def remove_tree(path: Path) -> None:
    """Delete a directory tree; already gone is success."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
