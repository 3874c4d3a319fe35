"""The initramfs: static busybox, the virtio modules (with their dependencies, in load order) and hearth's `/init`.

Debian's kernels build virtio (PCI and MMIO), virtio-blk and virtio-net as modules, so they cannot mount the root
disk without help. Dependencies are read from each module's own `.modinfo` section (`depends=`), so no `depmod`
output is needed; the init loads `lib/modules/load.order` top to bottom with busybox `insmod`.
"""

from __future__ import annotations

import lzma
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from hearth.guest.files import INITRAMFS_INIT
from hearth.image import cpio

_MODINFO_DEPENDS = re.compile(rb"(?:^|\x00)depends=([A-Za-z0-9_,\-]*)\x00")


@dataclass(frozen=True)
class ModuleSet:
    """Modules to load, dependencies first: (name, path relative to lib/modules/<release>)."""

    release: str
    ordered: tuple[tuple[str, Path], ...]
    builtin: tuple[str, ...]
    missing: tuple[str, ...]


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_index(moddir: Path) -> dict[str, Path]:
    """Module name → path, for every `.ko` (or compressed `.ko.xz`) under `moddir/kernel`."""
    out: dict[str, Path] = {}
    for path in moddir.rglob("*.ko*"):
        name = path.name.split(".ko", 1)[0]
        out[_norm(name)] = path
    return out


def builtin_modules(moddir: Path) -> set[str]:
    try:
        text = (moddir / "modules.builtin").read_text()
    except FileNotFoundError:
        return set()
    return {_norm(Path(line.strip()).name.split(".ko", 1)[0]) for line in text.splitlines() if line.strip()}


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        raise ValueError(f"{path}: zstd-compressed modules are not supported; use a kernel with plain or xz modules")
    return data


def depends(data: bytes) -> list[str]:
    """The `depends=` field of a module's .modinfo section."""
    m = _MODINFO_DEPENDS.search(data)
    if not m or not m.group(1):
        return []
    return [_norm(d) for d in m.group(1).decode().split(",") if d]


def resolve(moddir: Path, wanted: tuple[str, ...]) -> ModuleSet:
    """Modules `wanted` plus their dependencies, each after everything it depends on."""
    index = module_index(moddir)
    builtin = builtin_modules(moddir)
    ordered: list[tuple[str, Path]] = []
    seen: set[str] = set()
    missing: list[str] = []
    built: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        name = _norm(name)
        if name in seen or name in stack:
            return
        if name not in index:
            (built if name in builtin else missing).append(name)
            seen.add(name)
            return
        path = index[name]
        for dep in depends(read_module(path)):
            visit(dep, (*stack, name))
        seen.add(name)
        ordered.append((name, path.relative_to(moddir)))

    for name in wanted:
        visit(name, ())
    return ModuleSet(moddir.name, tuple(ordered), tuple(built), tuple(missing))


def build(moddir: Path, busybox: Path, wanted: tuple[str, ...]) -> tuple[bytes, ModuleSet]:
    """The gzip-compressed newc initramfs and the module set it loads."""
    mods = resolve(moddir, wanted)
    if mods.missing:
        raise ValueError(f"kernel modules not found in {moddir}: {', '.join(mods.missing)}")
    entries = [
        cpio.directory("bin"),
        cpio.directory("dev"),
        cpio.chardev("dev/console", 5, 1),
        cpio.chardev("dev/null", 1, 3, 0o666),
        cpio.directory("proc"),
        cpio.directory("sys"),
        cpio.directory("newroot"),
        cpio.directory("lib"),
        cpio.directory("lib/modules"),
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.file("init", INITRAMFS_INIT.encode(), 0o755),
    ]
    order = []
    for name, _rel in mods.ordered:
        fname = f"{name}.ko"
        entries.append(cpio.file(f"lib/modules/{fname}", read_module(moddir / _rel), 0o644))
        order.append(fname)
    entries.append(cpio.file("lib/modules/load.order", ("\n".join(order) + "\n").encode(), 0o644))
    assert all(stat.S_IFMT(e.mode) for e in entries)
    return cpio.gzipped(cpio.archive(entries)), mods
