"""The guest packages (`hearth_agent` and the agent's only dependencies: `pyte` and `wcwidth`, pure Python, pinned in
pyproject.toml — plus the test identity provider `hearth_example` only where tests ask for it) as a directory a
sandbox user can bind.

The installed source may sit where the unprivileged sandbox user cannot reach it (a checkout under /root), and
bubblewrap resolves bind sources as that user. So the packages are copied — once per content — to
`<data_dir>/guest/<digest>/`, world-readable and never modified afterwards: content-addressed, installed by an
atomic rename, so concurrent starts and running sandboxes never see a half-written or replaced tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pyte
import wcwidth

import hearth_agent

log = logging.getLogger("hearth.guest")
# An imported package, or the name of one whose files are shipped without importing it here: the test identity
# provider is found by name, so production code never imports hearth_example.
Package = ModuleType | str
PACKAGES: tuple[ModuleType, ...] = (hearth_agent, pyte, wcwidth)  # every guest
TEST_PACKAGES: tuple[str, ...] = ("hearth_example",)  # guests built or run for tests only


def packages(for_tests: bool) -> tuple[Package, ...]:
    """The guest packages; `hearth_example` (the test identity provider and its CLI) only `for_tests`."""
    return PACKAGES + TEST_PACKAGES if for_tests else PACKAGES


def package_dir(pkg: Package) -> Path:
    """The source folder of a package (a name is located, not imported)."""
    if isinstance(pkg, str):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"guest package {pkg!r} is not installed", name=pkg)
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(next(iter(pkg.__path__)))


_SKIP = ("__pycache__",)
GUEST_PYTHON = "/usr/bin/python3"  # what runs the agent in a sandbox (hearth/sandbox/netns.py)
_COMPILED = b"compiled by the guest python\0"  # part of the digest: trees from before bytecode was shipped differ


def _compile(tree: Path) -> None:
    """Bytecode for the guest's Python next to the sources: sandboxes bind the tree read-only, so without it every
    agent start compiles every module again (≈40 ms of CPU per boot, paid 60 times in a boot storm)."""
    python = GUEST_PYTHON if os.path.exists(GUEST_PYTHON) else sys.executable
    try:
        subprocess.run(
            [python, "-m", "compileall", "-q", str(tree)],
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # sources alone still work: slower starts, not a failure
        log.warning("guest packages not compiled (%s); sandboxes compile them at each start", exc)


def _files(pkgs: tuple[Package, ...]) -> list[tuple[str, Path]]:
    out = []
    for pkg in pkgs:
        src = package_dir(pkg)
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP)
            for name in sorted(files):
                if name.endswith(".py"):
                    path = Path(root) / name
                    out.append((f"{src.name}/{path.relative_to(src)}", path))
    return out


def install(base: Path, pkgs: tuple[Package, ...] = PACKAGES) -> Path:
    """A directory under `base` holding `pkgs` (import root for PYTHONPATH); created if missing."""
    files = _files(pkgs)
    digest = hashlib.sha256(_COMPILED)
    blobs = []
    for rel, path in files:
        data = path.read_bytes()
        blobs.append((rel, data))
        digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    dest = base / digest.hexdigest()[:16]
    if dest.is_dir():
        return dest
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    tmp = base / f".tmp-{secrets.token_hex(6)}"
    try:
        tmp.mkdir(mode=0o755)
        for rel, data in blobs:
            target = tmp / rel
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, 0o755 if rel.endswith("_hook.py") else 0o644)
        _compile(tmp)
        for root, dirs, names in os.walk(tmp):
            for d in dirs:
                os.chmod(Path(root) / d, 0o755)
            for name in names:
                if name.endswith(".pyc"):
                    os.chmod(Path(root) / name, 0o644)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not "another start installed the same content first"
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return dest
