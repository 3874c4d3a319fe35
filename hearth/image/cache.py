"""The image cache: finished images under `<HEARTH_DATA_DIR>/images/<hash>/`, the `image` link the drivers load,
garbage collection and the build lock (see hearth/image/build.py for what an image holds).

    <cache>/<hash>/manifest.json  hash, inputs, installed versions, sizes, created_at (written last: no manifest,
                                  no image)
    <cache>/.build-<hash>-<pid>   a build in progress (renamed to `<hash>` when complete)
    <cache>/.lock                 held while a build runs
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.guest.layout import ROOTFS_DIR, GuestImage
from hearth.image.spec import ImageSpec

MANIFEST = "manifest.json"
BUILD_PREFIX = ".build-"


@dataclass(frozen=True)
class BuiltImage:
    """A finished image in the cache."""

    path: Path
    manifest: dict[str, Any]

    @property
    def hash(self) -> str:
        return str(self.manifest["hash"])

    @property
    def guest_image(self) -> GuestImage:
        return guest_image(self.path)


def guest_image(path: Path) -> GuestImage:
    return GuestImage.at(path)


def load(path: Path) -> BuiltImage | None:
    """The finished image at `path`, or None when anything is missing."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    img = guest_image(path)
    need = [img.kernel, img.rootfs, img.initrd, img.vmlinux]
    if not all(p is not None and p.is_file() for p in need) or not (path / ROOTFS_DIR).is_dir():
        return None
    return BuiltImage(path, manifest)


def list_images(cache: Path) -> list[BuiltImage]:
    """Finished images in the cache, newest first."""
    out = []
    if cache.is_dir():
        for entry in cache.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            img = load(entry)
            if img is not None:
                out.append(img)
    return sorted(out, key=lambda i: str(i.manifest.get("created_at", "")), reverse=True)


def current_link_target(link: Path) -> Path | None:
    """Where `<data_dir>/image` points, when it is a link to a cached image."""
    if link.is_symlink():
        return link.resolve()
    return None


def point_current(link: Path, image_dir: Path) -> bool:
    """Point `link` (`<data_dir>/image`) at `image_dir` atomically. False when `link` is a real directory (a
    hand-made image, left alone)."""
    if link.exists() and not link.is_symlink():
        return False
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(image_dir)
    os.replace(tmp, link)
    return True


def gc(cache: Path, keep: set[str], unused_for: float = 0.0) -> list[Path]:
    """Remove every cached image whose hash is not in `keep` (and, with `unused_for`, that nobody marked as used —
    `touch` — for that many seconds: another process may be running it), and leftovers of dead builds."""
    removed: list[Path] = []
    if not cache.is_dir():
        return removed
    now = time.time()
    for entry in sorted(cache.iterdir()):
        if entry.name.startswith(BUILD_PREFIX):
            pid = entry.name.rsplit("-", 1)[-1]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                continue  # a build in progress
        elif entry.name.startswith(".") or not entry.is_dir() or entry.name in keep:
            continue
        elif unused_for and now - entry.stat().st_mtime < unused_for:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Hold the cache's build lock (one build at a time per cache; others wait, then find the image built)."""
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def find(cache: Path, spec: ImageSpec) -> BuiltImage | None:
    """The finished image for `spec` in the cache, or None."""
    return load(cache / spec.hash)
