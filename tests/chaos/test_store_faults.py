"""The store fails soft (issue 12): a PostgreSQL server stopped and started again, a data dir on a full disk (a
small tmpfs this test mounts and unmounts), the data dir removed — each against a real controller with real
sandboxes and a live viewer (`tests.chaos.faults.outage`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.serving.local import free_port
from tests.chaos.faults import outage
from tests.conftest import running_controller
from tests.image.golden import TESTS_BASE
from tests.pgcluster import available, cluster, fresh_database

pytestmark = [pytest.mark.netns, pytest.mark.slow]
LIGHT = {"HEARTH_CHROMIUM": "false", "HEARTH_RATE_LIMIT": "0"}


async def test_postgresql_down_and_back(make_settings: Callable[..., Settings]) -> None:
    if not available():
        pytest.skip("needs root and Debian's postgresql (scripts/setup.sh)")
    with cluster(free_port()) as pg, fresh_database(pg.url) as url:
        settings = make_settings(HEARTH_DATABASE_URL=url, **LIGHT)
        async with running_controller(settings) as ctl:

            async def down() -> None:
                pg.stop()

            async def up() -> None:
                pg.start()

            await outage(ctl, down, up)


@contextlib.contextmanager
def small_tmpfs(size_mb: int) -> Iterator[Path]:
    TESTS_BASE.mkdir(mode=0o711, exist_ok=True)
    path = TESTS_BASE / f"tmpfs-{secrets.token_hex(4)}"
    path.mkdir(mode=0o711)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0711", "hearth-test", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def fill(path: Path) -> Path:
    """Write zeros into `path/filler` until the filesystem is full. Unbuffered: a buffered file would keep the tail
    of the last, partial write and raise ENOSPC again when closed (whenever the free space is not a whole number of
    chunks)."""
    filler = path / "filler"
    chunk = b"\0" * (1 << 16)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while os.write(fd, chunk):  # a short write first, then ENOSPC
            pass
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.close(fd)
    assert shutil.disk_usage(path).free < len(chunk), "the filesystem did not fill up"
    return filler


async def test_disk_full_and_freed(make_settings: Callable[..., Settings]) -> None:
    """SQLite in the data dir on a full disk (on the PostgreSQL pass too: the database must be on that disk)."""
    with small_tmpfs(96) as data:
        settings = make_settings(HEARTH_DATA_DIR=str(data), HEARTH_DATABASE_URL="", HEARTH_MIN_FREE_MB="2", **LIGHT)
        async with running_controller(settings) as ctl:
            filler = data / "filler"

            async def full() -> None:
                fill(data)

            async def freed() -> None:
                filler.unlink()

            await outage(ctl, full, freed, broken_check="disk")
            assert shutil.disk_usage(data).free > 0


async def test_data_dir_removed(make_settings: Callable[..., Settings], data_dir: Path) -> None:
    settings = make_settings(**LIGHT)
    async with running_controller(settings) as ctl:
        gone = data_dir.with_name(data_dir.name + ".removed")

        async def removed() -> None:
            # The path vanishes at once (as `rm -rf` ends); the live sandbox may still write into the tree while it
            # is being deleted, so the tree goes from where it was moved, as far as it can while the test runs.
            data_dir.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)

        await outage(ctl, removed, None, broken_check="data_dir")
    shutil.rmtree(gone, ignore_errors=True)  # what the sandbox wrote meanwhile
    data_dir.mkdir(mode=0o711, exist_ok=True)  # the fixture removes it again
