"""`hearth image build`: one golden guest image for every driver, content-addressed and cached.

    <cache>/<hash>/rootfs/        the unpacked tree (the netns driver's bubblewrap root)
    <cache>/<hash>/rootfs.ext4    the same tree as an ext4 image (VM drivers; never written: copy-on-write per VM)
    <cache>/<hash>/bzImage        Debian's cloud kernel (QEMU)
    <cache>/<hash>/vmlinux        the same kernel, uncompressed ELF (Firecracker)
    <cache>/<hash>/initrd.img     busybox + virtio modules: mounts /dev/vda and switches to /sbin/hearth-init
    <cache>/<hash>/manifest.json  hash, inputs, installed versions, sizes, created_at

`<cache>` is `<HEARTH_DATA_DIR>/images`; the hash covers every input (`hearth.image.spec`), so a build runs only when
an input changed (or with `force`). A build happens in `<cache>/.build-<hash>-<pid>` and is renamed into place at
the end, so a half-built image is never used; chroot mounts live in a private mount namespace (`unshare -m`) and
vanish with it. `<HEARTH_DATA_DIR>/image` is pointed at the newest build: what the drivers load.

This module is the entry point (`current_spec()`, `ensure()`); the cache is hearth/image/cache.py, the named steps
hearth/image/recipe.py, the commands they run hearth/image/steps.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from hearth.guest import clis
from hearth.guest import files as guest
from hearth.guest import packages as guestpkg
from hearth.image import recipe
from hearth.image.cache import (
    BUILD_PREFIX,
    MANIFEST,
    BuiltImage,
    current_link_target,
    find,
    gc,
    guest_image,
    list_images,
    load,
    locked,
    point_current,
)
from hearth.image.spec import MIRROR, SECURITY_MIRROR, ImageSpec, digest, tree_digests
from hearth.image.steps import BuildError, NullProgress, PrintProgress, Progress, package_dir

__all__ = [
    "BUILD_PREFIX",
    "MANIFEST",
    "BuildError",
    "BuiltImage",
    "NullProgress",
    "PrintProgress",
    "Progress",
    "agent_drift",
    "current_link_target",
    "current_spec",
    "ensure",
    "find",
    "gc",
    "guest_image",
    "list_images",
    "load",
    "point_current",
]


def current_spec(chromium: bool = True, extra_packages: tuple[str, ...] = (), for_tests: bool = False) -> ImageSpec:
    """The spec of the image this source tree builds (guest files and agent sources digested); the test identity
    provider `hearth_example` is in it only `for_tests` (`hearth image build --for-tests`, the test suite's image)."""
    agent: dict[str, str] = {}
    for pkg in guestpkg.packages(for_tests):
        src = package_dir(pkg)
        agent.update(tree_digests(src, src.name))
    files = {path: digest(data) for path, data in guest.guest_files().items()}
    return ImageSpec(
        chromium=chromium, extra_packages=extra_packages, guest_files=files, agent_files=agent, clis=clis.lock_hash()
    )


def agent_drift(path: Path) -> list[str]:
    """Guest-package files (agent, example CLI) that differ between the image at `path` and this source tree: an
    image built before hearth was upgraded runs an older agent. Empty when current, or when `path` holds no image."""
    try:
        built = json.loads((path / MANIFEST).read_text())["inputs"]["agent_files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(built, dict):
        return []
    for_tests = any(k.startswith("hearth_example/") for k in built)
    now = current_spec(for_tests=for_tests).agent_files
    return sorted(k for k in set(built) | set(now) if built.get(k) != now.get(k))


def ensure(
    cache: Path,
    spec: ImageSpec,
    *,
    force: bool = False,
    progress: Progress | None = None,
    mirror: str = MIRROR,
    security_mirror: str = SECURITY_MIRROR,
) -> tuple[BuiltImage, bool]:
    """The image for `spec`: from the cache, or built now. Returns (image, built)."""
    progress = progress or NullProgress()
    if os.geteuid() != 0:
        existing = find(cache, spec)
        if existing is not None and not force:
            return existing, False
        raise BuildError("building the guest image needs root (debootstrap, chroot)", "run `sudo hearth image build`")
    with locked(cache):
        existing = find(cache, spec)
        if existing is not None and not force:
            return existing, False
        for tool in ("debootstrap", "mkfs.ext4", "unshare", "chroot"):
            if shutil.which(tool) is None:
                raise BuildError(f"{tool} not found", "run scripts/setup.sh (debootstrap, e2fsprogs, util-linux)")
        gc(cache, keep={p.name for p in cache.iterdir() if not p.name.startswith(BUILD_PREFIX)})  # dead builds only
        work = cache / f"{BUILD_PREFIX}{spec.hash}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o755)
        try:
            manifest = recipe.build(work, spec, progress, mirror, security_mirror)
            final = cache / spec.hash
            if final.exists():
                old = cache / f"{BUILD_PREFIX}{spec.hash}-old{os.getpid()}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    os.chmod(cache, 0o755)
    built = load(final)
    if built is None:
        raise BuildError(f"the image in {final} is incomplete after the build", "rerun with --force")
    assert built.manifest["hash"] == manifest["hash"]
    return built, True
