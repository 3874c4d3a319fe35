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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hearth.errors import DriverError, Hop
from hearth.guest import files as guest
from hearth.guest import packages as guestpkg
from hearth.guest.layout import INITRD, KERNEL, ROOTFS_DIR, ROOTFS_EXT4, VMLINUX, GuestImage
from hearth.image import initramfs
from hearth.image.spec import (
    BUSYBOX_PACKAGE,
    FORBIDDEN_PACKAGES,
    INITRAMFS_MODULES,
    MIRROR,
    SECURITY_MIRROR,
    ImageSpec,
    digest,
    tree_digests,
)
from hearth.image.vmlinux import extract_vmlinux
from hearth.providers import clis

MANIFEST = "manifest.json"
BUILD_PREFIX = ".build-"
EXT4_HEADROOM = 768 << 20  # free space inside the guest's root fs (home, Chromium profile, /var)
NETWORK_UNITS = ("systemd-networkd.service", "systemd-networkd.socket", "NetworkManager.service", "networking.service")
_APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}
_APT_OPTS = (
    "-o",
    "APT::Install-Recommends=false",
    "-o",
    "APT::Install-Suggests=false",
    "-o",
    "Acquire::Languages=none",
)


class BuildError(DriverError):
    """An image build step failed; the message carries the step and the end of its output."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(Hop.DRIVER, message, hint or "see the output above; rerun `hearth image build --force`")


class Progress(Protocol):
    """What the builder reports; the CLI draws it with Rich, tests print it."""

    def stage(self, name: str, total: float | None = None) -> None: ...

    def advance(self, amount: float = 1.0) -> None: ...

    def total(self, total: float) -> None: ...

    def note(self, text: str) -> None: ...


class NullProgress:
    def stage(self, name: str, total: float | None = None) -> None:
        return None

    def advance(self, amount: float = 1.0) -> None:
        return None

    def total(self, total: float) -> None:
        return None

    def note(self, text: str) -> None:
        return None


class PrintProgress(NullProgress):
    """Stage names with their durations on stdout (tests, CI logs)."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._name = ""

    def stage(self, name: str, total: float | None = None) -> None:
        now = time.monotonic()
        if self._name:
            print(f"image build: {self._name} {now - self._t:.1f}s", flush=True)
        self._name, self._t = name, now

    def note(self, text: str) -> None:
        print(f"image build: {text}", flush=True)


# ---- inputs ---------------------------------------------------------------------------------------------------------
def _package_dir(pkg: Any) -> Path:
    return Path(next(iter(pkg.__path__)))


def current_spec(chromium: bool = True, extra_packages: tuple[str, ...] = (), for_tests: bool = False) -> ImageSpec:
    """The spec of the image this source tree builds (guest files and agent sources digested); the test identity
    provider `hearth_example` is in it only `for_tests` (`hearth image build --for-tests`, the test suite's image)."""
    agent: dict[str, str] = {}
    for pkg in guestpkg.packages(for_tests):
        src = _package_dir(pkg)
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


# ---- the cache ------------------------------------------------------------------------------------------------------
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
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---- running the steps ----------------------------------------------------------------------------------------------
def _run(
    argv: list[str],
    what: str,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> str:
    """Run a build command; stream its output lines to `on_line`; raise BuildError with its last lines."""
    tail: deque[str] = deque(maxlen=40)
    out: list[str] = []
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,  # its own process group: an interrupted build kills apt/dpkg too, not just unshare
    )
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            out.append(line)
            if on_line is not None:
                on_line(line)
            if time.monotonic() > deadline:
                raise BuildError(f"{what}: timed out after {timeout:.0f}s")
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if code != 0:
        last = "\n".join(tail)
        raise BuildError(f"{what} failed with exit status {code}:\n{last}")
    return "\n".join(out)


def _chroot(root: Path, script: str, what: str, on_line: Callable[[str], None] | None = None) -> str:
    """Run `script` (sh) in the chroot, in a private mount namespace with /proc mounted: no mount outlives it."""
    inner = f'mount -t proc proc "{root}/proc" && exec chroot "{root}" /bin/sh -ec "$0"'
    return _run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", inner, script],
        what,
        on_line,
        env={**_APT_ENV},
    )


def _counter(progress: Progress, pattern: str, total_pattern: str | None = None) -> Callable[[str], None]:
    """Advance `progress` on every line matching `pattern`; a line matching `total_pattern` sets the total (its
    first group, doubled: apt prints one Unpacking and one Setting up line per package)."""
    rx = re.compile(pattern)
    rx_total = re.compile(total_pattern) if total_pattern else None

    def on_line(line: str) -> None:
        if rx_total is not None:
            m = rx_total.search(line)
            if m:
                progress.total(int(m.group(1)) * 2)
        if rx.search(line):
            progress.advance()

    return on_line


def _du(path: Path) -> int:
    """Bytes allocated under `path`, hard links counted once (like du)."""
    total = 0
    seen: set[int] = set()
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total


def _write(root: Path, rel: str, data: bytes, mode: int) -> None:
    dest = root / rel.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    os.chmod(dest, mode)


def _copy_agent(root: Path, spec: ImageSpec) -> None:
    """The guest packages the spec digested (so `hearth_example` only in an image built for tests)."""
    opt = root / "opt" / "hearth"
    opt.mkdir(parents=True, exist_ok=True)
    wanted = {path.split("/", 1)[0] for path in spec.agent_files}
    for pkg in guestpkg.packages(for_tests=True):
        src = _package_dir(pkg)
        if src.name not in wanted:
            continue
        dest = opt / src.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    for dirpath, dirs, files in os.walk(opt):
        os.chmod(dirpath, 0o755)
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o755 if f.endswith("_hook.py") else 0o644)


def _copy_clis(root: Path) -> dict[str, str]:
    """Node + the provider CLIs pinned in clis/package-lock.json, as installed on this host by scripts/setup.sh."""
    try:
        src = clis.require()
    except clis.ClisMissing as exc:
        raise BuildError(str(exc), "run `bash scripts/setup.sh`, then `hearth image build`") from None
    dest = root / clis.GUEST_CLIS.lstrip("/")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, symlinks=True)
    return clis.versions(dest)


def _trim(root: Path) -> None:
    """Drop what no sandbox reads: apt caches and lists, documentation (copyright files stay), man pages, logs."""
    for rel in ("var/cache/apt", "var/lib/apt/lists", "usr/share/man", "usr/share/info", "var/log", "tmp", "var/tmp"):
        d = root / rel
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    doc = root / "usr/share/doc"
    if doc.is_dir():
        for pkg in doc.iterdir():
            if pkg.is_dir() and not pkg.is_symlink():
                for child in pkg.iterdir():
                    if child.name != "copyright":
                        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    locales = root / "usr/lib/chromium/locales"
    if locales.is_dir():
        for pak in locales.iterdir():
            if pak.name not in ("en-US.pak", "en-US.pak.info"):
                pak.unlink()
    for old in (root / "var/cache/debconf").glob("*-old"):
        old.unlink()


# ---- the build ------------------------------------------------------------------------------------------------------
def find(cache: Path, spec: ImageSpec) -> BuiltImage | None:
    return load(cache / spec.hash)


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
    with _locked(cache):
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
            manifest = _build(work, spec, progress, mirror, security_mirror)
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


def _build(work: Path, spec: ImageSpec, progress: Progress, mirror: str, security_mirror: str) -> dict[str, Any]:
    t0 = time.monotonic()
    root = work / ROOTFS_DIR
    timings: dict[str, float] = {}
    mark = {"t": time.monotonic()}

    def done(name: str) -> None:
        now = time.monotonic()
        timings[name] = round(now - mark["t"], 1)
        mark["t"] = now

    # 1. base system
    progress.stage("debootstrap (minbase)", 330)
    _run(
        ["debootstrap", "--variant=minbase", spec.suite, str(root), mirror],
        "debootstrap",
        _counter(progress, r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) "),
    )
    done("debootstrap")

    # 2. packages, from the suite, its updates and security updates
    sources = (
        f"deb {mirror} {spec.suite} main\n"
        f"deb {mirror} {spec.suite}-updates main\n"
        f"deb {security_mirror} {spec.suite}-security main\n"
    )
    _write(root, "etc/apt/sources.list", sources.encode(), 0o644)
    _write(root, "usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n", 0o755)  # no service starts during the build
    pins = "".join(
        f"Package: {p}\nPin: release *\nPin-Priority: -1\n\n" for p in FORBIDDEN_PACKAGES
    )  # apt must never pick a second network manager (or systemd, which carries systemd-networkd)
    _write(root, "etc/apt/preferences.d/hearth-no-network-managers", pins.encode(), 0o644)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    opts = " ".join(_APT_OPTS)
    progress.stage("apt-get update")
    _chroot(root, f"apt-get {opts} update", "apt-get update")
    done("apt_update")
    pkgs = " ".join(spec.packages)
    progress.stage(f"apt-get install ({len(spec.packages)} packages and their dependencies)", 500)
    _chroot(
        root,
        f"apt-get {opts} -y install {pkgs}",
        "apt-get install",
        _counter(progress, r"^(Unpacking|Setting up) ", r"(\d+) newly installed"),
    )
    done("apt_install")

    # 3. kernel and busybox: downloaded and unpacked beside the root fs, never installed into it
    progress.stage("kernel and busybox packages")
    deps = _chroot(root, f"apt-cache depends --no-recommends --no-suggests {spec.kernel_package}", "apt-cache depends")
    m = re.search(r"Depends:\s*(linux-image-[^\s<>]+)", deps)
    if not m:
        raise BuildError(f"cannot resolve {spec.kernel_package} to a kernel package:\n{deps}")
    kpkg = m.group(1)
    _chroot(
        root,
        "rm -rf /var/tmp/hearth-debs /var/tmp/hearth-x && mkdir -p /var/tmp/hearth-debs /var/tmp/hearth-x && "
        "chown _apt /var/tmp/hearth-debs && cd /var/tmp/hearth-debs && "
        f"apt-get {opts} download {kpkg} {BUSYBOX_PACKAGE} && "
        'for d in *.deb; do dpkg-deb -x "$d" "/var/tmp/hearth-x/${d%%_*}"; done && '
        "dpkg-deb -f " + kpkg + "_*.deb Version > /var/tmp/hearth-x/kernel.version",
        "download kernel",
    )
    extracted = root / "var/tmp/hearth-x"
    kernel_version = (extracted / "kernel.version").read_text().strip()
    kroot = extracted / kpkg
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))
    moddirs = sorted((kroot / "lib/modules").glob("*"))
    if not vmlinuz or not moddirs:
        raise BuildError(f"{kpkg} holds no /boot/vmlinuz-* or /lib/modules/*")
    busybox = extracted / BUSYBOX_PACKAGE / "bin/busybox"
    if not busybox.is_file():
        raise BuildError(f"{BUSYBOX_PACKAGE} holds no /bin/busybox")
    done("kernel_download")

    # 4. the guest: user, init, agent; nothing else configures the network
    progress.stage("guest configuration")
    _chroot(
        root,
        f"useradd --uid {guest.GUEST_UID} --user-group --create-home --home-dir /home/{guest.GUEST_USER} "
        f"--shell /usr/sbin/nologin {guest.GUEST_USER}",
        "useradd",
    )
    for path, data in guest.rootfs_files().items():
        _write(root, path, data, 0o755 if path == guest.INIT_PATH else 0o644)
    init_link = root / "sbin/init"
    if init_link.is_symlink() or not init_link.exists():
        with contextlib.suppress(FileNotFoundError):
            init_link.unlink()
        init_link.symlink_to("hearth-init")  # kernels booted without init= (or without our initramfs) land here
    _copy_agent(root, spec)
    cli_versions = _copy_clis(root)
    _chroot(root, "python3 -m compileall -q /opt/hearth >/dev/null", "compile the agent")
    _write(root, "etc/hostname", b"hearth\n", 0o644)
    _write(root, "etc/hosts", b"127.0.0.1\tlocalhost\n127.0.1.1\thearth\n::1\tlocalhost ip6-localhost\n", 0o644)
    _write(root, "etc/resolv.conf", b"", 0o644)
    _write(root, "etc/machine-id", b"", 0o444)
    for unit in NETWORK_UNITS:  # mask if any package brought one (none should: see the check below)
        if (root / "lib/systemd/system" / unit).exists():
            masked = root / "etc/systemd/system" / unit
            masked.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                masked.unlink()
            masked.symlink_to("/dev/null")
    with contextlib.suppress(FileNotFoundError):
        (root / "etc/network/interfaces").unlink()
    installed = _chroot(root, "dpkg-query -W -f '${Package}\\t${Version}\\n'", "dpkg-query")
    versions = dict(line.split("\t", 1) for line in installed.splitlines() if "\t" in line)
    bad = sorted(set(versions) & set(FORBIDDEN_PACKAGES))
    if bad:
        raise BuildError(f"the image would contain {', '.join(bad)}, a second way to configure eth0")
    done("configure")

    # 5. kernel, vmlinux, initramfs
    progress.stage("kernel, vmlinux, initramfs")
    shutil.copyfile(vmlinuz[-1], work / KERNEL)
    elf, compression = extract_vmlinux((work / KERNEL).read_bytes())
    (work / VMLINUX).write_bytes(elf)
    initrd, mods = initramfs.build(moddirs[-1], busybox, INITRAMFS_MODULES)
    (work / INITRD).write_bytes(initrd)
    for name in (KERNEL, VMLINUX, INITRD):
        os.chmod(work / name, 0o644)
    done("kernel")

    # 6. trim, then the ext4 image of the tree
    progress.stage("trim and ext4 image")
    shutil.rmtree(extracted)
    (root / "usr/sbin/policy-rc.d").unlink()
    _trim(root)
    os.chmod(root, 0o755)
    used = _du(root)
    size = ((used * 5 // 4 + EXT4_HEADROOM) + (64 << 20) - 1) // (64 << 20) * (64 << 20)
    ext4 = work / ROOTFS_EXT4
    with open(ext4, "wb") as f:
        f.truncate(size)
    _run(
        [
            "mkfs.ext4", "-q", "-F", "-L", "hearth-root", "-m", "0", "-O", "^has_journal",
            "-E", "lazy_itable_init=0,root_owner=0:0", "-d", str(root), str(ext4),
        ],
        "mkfs.ext4",
    )  # fmt: skip
    os.chmod(ext4, 0o644)
    done("ext4")

    manifest: dict[str, Any] = {
        "hash": spec.hash,
        "inputs": spec.inputs(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - t0, 1),
        "timings": timings,
        "kernel": {
            "package": kpkg,
            "version": kernel_version,
            "release": moddirs[-1].name,
            "compression": compression,
            "initramfs_modules": [name for name, _ in mods.ordered],
            "builtin": list(mods.builtin),
        },
        "versions": {p: versions[p] for p in (*spec.packages, "python3.11") if p in versions} | cli_versions,
        "sizes": {
            "rootfs_dir": used,
            "rootfs_ext4": size,
            "rootfs_ext4_allocated": os.stat(ext4).st_blocks * 512,
            "kernel": os.stat(work / KERNEL).st_size,
            "vmlinux": os.stat(work / VMLINUX).st_size,
            "initrd": os.stat(work / INITRD).st_size,
        },
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
