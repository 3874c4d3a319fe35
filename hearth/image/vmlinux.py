"""Extract the uncompressed ELF `vmlinux` from a bzImage — the Linux `scripts/extract-vmlinux` logic in Python.

A bzImage is a small decompressor followed by the compressed kernel. We look for the magic of every compression the
kernel supports, decompress from each candidate offset, and keep the first result that is an ELF image. Firecracker
boots only the ELF; QEMU boots the bzImage itself.

Debian's `linux-image-*-cloud-amd64` (bookworm) is LZ4-compressed (`CONFIG_KERNEL_LZ4`), in the legacy LZ4 frame
format the kernel's `lz4 -l` writes: magic `02 21 4c 18`, then blocks of `<u32 compressed size><LZ4 block>` of at
most 8 MiB decompressed each. The blocks are decoded with the `lz4` package; gzip, xz, lzma and bzip2 with the
standard library; zstd with the `zstd` command.
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator

ELF_MAGIC = b"\x7fELF"
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20

# (name, magic bytes) in the order extract-vmlinux tries them.
MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00\x00"),
    ("lzo", b"\x89LZO"),
    ("lz4", struct.pack("<I", LZ4_LEGACY_MAGIC)),
    ("zstd", b"\x28\xb5\x2f\xfd"),
)


class ExtractError(Exception):
    """No compressed payload in the file decompressed to an ELF image."""


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # tolerates trailing bytes after the stream
    return d.decompress(data)


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _unlzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _bunzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _unlz4_legacy(data: bytes) -> bytes:
    """Legacy LZ4 frame: magic, then `<u32 size><block>` until the input ends or a size cannot be a block."""
    import lz4.block

    if len(data) < 4 or struct.unpack_from("<I", data, 0)[0] != LZ4_LEGACY_MAGIC:
        raise ExtractError("not a legacy LZ4 frame")
    out: list[bytes] = []
    pos = 4
    while pos + 4 <= len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        if size == LZ4_LEGACY_MAGIC:  # concatenated frames
            pos += 4
            continue
        if size == 0 or size > len(data) - pos - 4:
            break  # the bzImage's trailing fields (e.g. the decompressed size), not a block
        try:
            block: bytes = lz4.block.decompress(data[pos + 4 : pos + 4 + size], uncompressed_size=LZ4_LEGACY_BLOCK)
        except Exception:
            if out:
                break
            raise
        out.append(block)
        pos += 4 + size
    return b"".join(out)


def _unzstd(data: bytes) -> bytes:
    exe = shutil.which("zstd")
    if exe is None:
        raise ExtractError("a zstd-compressed kernel needs the `zstd` command (apt-get install zstd)")
    done = subprocess.run([exe, "-dc", "-q"], input=data, capture_output=True, check=False, timeout=120)
    return done.stdout  # zstd complains about the bzImage's trailing bytes but has written the frame by then


def _unsupported(name: str) -> Callable[[bytes], bytes]:
    def fail(_data: bytes) -> bytes:
        raise ExtractError(f"{name}-compressed kernels are not supported")

    return fail


DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gunzip,
    "xz": _unxz,
    "bzip2": _bunzip2,
    "lzma": _unlzma,
    "lzo": _unsupported("lzo"),
    "lz4": _unlz4_legacy,
    "zstd": _unzstd,
}


def candidates(data: bytes) -> Iterator[tuple[str, int]]:
    """Every (compression, offset) where a known magic occurs, in extract-vmlinux's order."""
    for name, magic in MAGICS:
        start = 0
        while True:
            pos = data.find(magic, start)
            if pos < 0:
                break
            yield name, pos
            start = pos + 1


def elf_size(image: bytes) -> int:
    """The extent of a 64-bit little-endian ELF described by its headers (section table end, or file end)."""
    if image[:4] != ELF_MAGIC or image[4] != 2:
        return len(image)
    shoff = struct.unpack_from("<Q", image, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
    end = shoff + shentsize * shnum
    return end if 0 < end <= len(image) else len(image)


def extract_vmlinux(bzimage: bytes, max_tries: int = 64) -> tuple[bytes, str]:
    """The ELF kernel inside `bzimage` and the compression it was stored with. Raises ExtractError."""
    if bzimage[:4] == ELF_MAGIC:
        return bzimage, "none"
    tried = 0
    errors: list[str] = []
    for name, pos in candidates(bzimage):
        tried += 1
        if tried > max_tries:
            break
        try:
            out = DECODERS[name](bzimage[pos:])
        except ExtractError as exc:
            errors.append(str(exc))
            continue
        except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, RuntimeError):
            continue
        except Exception:  # a codec's own error type (lz4.block.LZ4BlockError, …)
            continue
        if out[:4] == ELF_MAGIC:
            return out[: elf_size(out)], name
    detail = f" ({'; '.join(sorted(set(errors)))})" if errors else ""
    raise ExtractError(f"no compressed ELF kernel found in the bzImage after {tried} candidates{detail}")
