"""The commands and file operations an image build is made of (hearth/image/recipe.py orders them into steps;
hearth/image/node.py reuses them for the node's container image): a command runner that streams output to the
progress display and fails with the end of its output, the chroot, and what is copied into or trimmed from the tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hearth.errors import DriverError, Hop
from hearth.guest import clis
from hearth.guest import packages as guestpkg
from hearth.image.spec import ImageSpec

APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}
APT_OPTS = (
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


def package_dir(pkg: guestpkg.Package) -> Path:
    """The source folder of a guest package."""
    return guestpkg.package_dir(pkg)


def run(
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


def chroot(root: Path, script: str, what: str, on_line: Callable[[str], None] | None = None) -> str:
    """Run `script` (sh) in the chroot, in a private mount namespace with /proc mounted: no mount outlives it."""
    inner = f'mount -t proc proc "{root}/proc" && exec chroot "{root}" /bin/sh -ec "$0"'
    return run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", inner, script],
        what,
        on_line,
        env={**APT_ENV},
    )


def counter(progress: Progress, pattern: str, total_pattern: str | None = None) -> Callable[[str], None]:
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


def du(path: Path) -> int:
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


def write(root: Path, rel: str, data: bytes, mode: int) -> None:
    dest = root / rel.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    os.chmod(dest, mode)


def copy_agent(root: Path, spec: ImageSpec) -> None:
    """The guest packages the spec digested (so `hearth_example` only in an image built for tests)."""
    opt = root / "opt" / "hearth"
    opt.mkdir(parents=True, exist_ok=True)
    wanted = {path.split("/", 1)[0] for path in spec.agent_files}
    for pkg in guestpkg.packages(for_tests=True):
        src = package_dir(pkg)
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


def copy_clis(root: Path) -> dict[str, str]:
    """Node + the provider CLIs pinned in clis/package-lock.json, as installed on this host by scripts/setup.sh."""
    try:
        src = clis.require()
    except clis.ClisMissing as exc:
        raise BuildError(str(exc), "run `bash scripts/setup.sh`, then `hearth image build`") from None
    dest = root / clis.GUEST_CLIS.lstrip("/")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, symlinks=True)
    return clis.versions(dest)


def trim(root: Path) -> None:
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
