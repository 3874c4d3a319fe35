"""A minimal `cpio -H newc` writer: what the kernel unpacks as an initramfs. Deterministic (fixed mtimes, inodes
in order), so equal inputs give byte-equal archives."""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `data` is the file content, or the target for a symlink."""

    name: str
    mode: int  # full st_mode, e.g. stat.S_IFREG | 0o755
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, e: Entry, name: bytes) -> bytes:
    fields = (
        ino,
        e.mode,
        e.uid,
        e.gid,
        2 if stat.S_ISDIR(e.mode) else 1,  # nlink
        0,  # mtime
        len(e.data),
        0,  # dev major
        0,  # dev minor
        e.rdev[0],
        e.rdev[1],
        len(name) + 1,
        0,  # check
    )
    return b"070701" + b"".join(f"{v:08X}".encode() for v in fields)


def archive(entries: list[Entry]) -> bytes:
    """The newc archive of `entries` (parents must precede children), with the trailer."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = e.name.lstrip("/").encode() or b"."
        head = _header(0 if e.name == TRAILER else ino, e, name) + name + b"\0"
        out += head + _pad4(len(head)) + e.data + _pad4(len(e.data))
    return bytes(out)


def gzipped(data: bytes) -> bytes:
    """gzip with mtime 0: reproducible."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def read_names(data: bytes) -> list[str]:
    """Member names of a (possibly gzip-compressed) newc archive — for tests and `hearth image list`."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    names, pos = [], 0
    while pos + 110 <= len(data):
        if data[pos : pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        size = int(data[pos + 54 : pos + 62], 16)
        namesize = int(data[pos + 94 : pos + 102], 16)
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        if name == TRAILER:
            break
        names.append(name)
        pos += 110 + namesize
        pos += -pos % 4
        pos += size
        pos += -pos % 4
    return names
