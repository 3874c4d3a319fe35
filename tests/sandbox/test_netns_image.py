"""The namespace driver on the golden image: bubblewrap's root is the image's rootfs (the very userspace the VM
drivers boot), with this controller's agent bound over the image's /opt/hearth — never an older agent baked in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import hearth_agent
from hearth.config import Settings
from hearth.fabric.fabric import Fabric
from hearth.image.build import BuiltImage
from hearth.sandbox.netns import NetnsDriver
from hearth.sandbox.procs import pids_in_netns
from tests.image.golden import golden_image
from tests.sandbox.specs import spec_for
from tests.sandbox.test_netns import health, leftovers, rfb_banner
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    return golden_image()


def _agent_root(netns: str) -> Path:
    """The root directory (as /proc shows it) of the sandbox's agent process."""
    for pid in pids_in_netns(netns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"hearth_agent" in cmdline and b"bwrap" not in cmdline:
            return Path(f"/proc/{pid}/root")
    raise AssertionError(f"no agent process in {netns}")


async def test_desktop_runs_on_the_image_rootfs_with_the_current_agent(
    image: BuiltImage, make_settings: Callable[..., Settings]
) -> None:
    s = make_settings(HEARTH_IMAGE_DIR=str(image.path), HEARTH_CHROMIUM="false")
    drv = NetnsDriver(s)
    assert drv.image_root() == image.path / "rootfs"
    fabric = Fabric(s)
    spec = spec_for(s, 3)
    await fabric.up()
    try:
        await drv.start(spec, lambda _: None)
        await eventually(lambda: health(s, spec), 20, "agent health")
        assert (await eventually(lambda: rfb_banner(s, spec), 20, "RFB banner")).startswith(b"RFB 003.")
        root = await asyncio.to_thread(_agent_root, spec.slot.netns)
        # The image's own files are the root (its init exists only there, not on the host) …
        assert (root / "sbin" / "hearth-init").is_file()
        assert not Path("/sbin/hearth-init").exists()
        # … and the agent is this source tree's, byte for byte.
        src = Path(next(iter(hearth_agent.__path__)))
        for name in ("server.py", "homefs.py", "signin.py"):
            assert (root / "opt" / "hearth" / "hearth_agent" / name).read_bytes() == (src / name).read_bytes()
        await drv.destroy(spec)
        assert await asyncio.to_thread(leftovers, s, spec) == []
    finally:
        await drv.destroy(spec)  # idempotent: a no-op after a clean pass
        await fabric.down(force=True)
