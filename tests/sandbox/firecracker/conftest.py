"""Fixtures for the Firecracker driver's contract tests.

No firecracker binary can be obtained where these tests run. The driver is proven against (1) Firecracker's own
OpenAPI spec (`fcspec.py` loads shared/firecracker/firecracker.yaml) and (2) `fake_firecracker.py`, a stand-in
API server launched as a real subprocess through a tiny wrapper script named `firecracker` — exactly where the real
binary would be — inside a real fabric namespace with a real TAP.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.guest.layout import GuestImage
from hearth.sandbox import procs as proc
from hearth.sandbox.base import SandboxSpec
from tests.sandbox.firecracker.fchelpers import FAKE, FAKE_JAILER, Fake, new_settings
from tests.sandbox.firecracker.fcspec import FirecrackerSpec
from tests.sandbox.specs import spec_for


@pytest.fixture(scope="session")
def fc_spec() -> FirecrackerSpec:
    return FirecrackerSpec()


@pytest.fixture
def settings() -> Iterator[Settings]:
    """Own fabric name, own data dir — a short one: Unix socket paths are limited to 107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="hfc-", dir="/tmp"))
    try:
        yield new_settings(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def spec(settings: Settings) -> SandboxSpec:
    return spec_for(settings)


@pytest.fixture
def image(tmp_path: Path) -> GuestImage:
    """A guest image that passes the driver's checks: an ELF-headed vmlinux, an initrd, a sparse ext4-sized rootfs."""
    d = tmp_path / "image"
    d.mkdir()
    (d / "vmlinux").write_bytes(b"\x7fELF" + b"\0" * 4092)
    (d / "initrd.img").write_bytes(b"\x1f\x8b" + b"\0" * 1022)
    rootfs = d / "rootfs.ext4"
    with open(rootfs, "wb") as f:
        f.write(b"golden-rootfs")
        f.truncate(64 * 1024 * 1024)
    for p in d.iterdir():
        p.chmod(0o644)
    return GuestImage(kernel=d / "vmlinux", initrd=d / "initrd.img", rootfs=rootfs)


@pytest.fixture
def make_fake(tmp_path: Path) -> Callable[..., Fake]:
    """`make_fake("--fake-fail", "PUT", "/machine-config", "msg")` → a `firecracker` stand-in with those knobs."""
    counter = iter(range(1000))

    def make(*knobs: str) -> Fake:
        d = tmp_path / f"bin{next(counter)}"
        d.mkdir()
        rec, pidfile = d / "requests.jsonl", d / "pid"
        script = d / "firecracker"
        args = [sys.executable, str(FAKE), "--fake-record", str(rec), "--fake-pidfile", str(pidfile), *knobs]
        script.write_text(
            "#!/bin/sh\n# Stands in for the firecracker binary, which cannot exist on this machine.\n"
            f'exec {shlex.join(args)} "$@"\n'
        )
        script.chmod(0o755)
        return Fake(script, rec, pidfile)

    return make


@pytest.fixture
def fake_jailer(tmp_path: Path) -> Path:
    """A `jailer` stand-in (see fake_jailer.py)."""
    d = tmp_path / "jailbin"
    d.mkdir()
    script = d / "jailer"
    script.write_text(
        "#!/bin/sh\n# Stands in for the jailer binary, which cannot exist on this machine.\n"
        f'exec {shlex.join([sys.executable, str(FAKE_JAILER)])} "$@"\n'
    )
    script.chmod(0o755)
    return script


@pytest.fixture
async def fabric(settings: Settings) -> AsyncIterator[Settings]:
    """A real fabric namespace (`hearth-t<hex>`) with its bridge; removed afterwards (even half-built)."""
    from hearth.fabric.fabric import Fabric

    try:
        await Fabric(settings).up()
        yield settings
    finally:
        await end_stand_ins(settings.fabric_netns)  # a failed test must not leave its VMM stand-ins running
        await Fabric(settings).down(force=True)


async def end_stand_ins(fabric: str) -> None:
    """SIGKILL and wait for every VMM process of this test's (uniquely named) fabric."""

    def ours(argv: list[str]) -> bool:
        return "--api-sock" in argv and any(f"{fabric}-s" in a for a in argv)

    for pid in proc.find_pids(ours):
        fd = proc.open_pidfd(pid, ours)
        if fd is not None:
            try:
                proc.send(fd)
                await proc.wait_exit(fd, 10)
            finally:
                os.close(fd)
