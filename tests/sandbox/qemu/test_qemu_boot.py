"""Real VMs: the golden image booted by QEMU on this host, inside a fabric namespace created for the test.

Under TCG (this machine's /dev/kvm is a paravirtual KVM on which stock guest kernels crash; the boot probe finds
that and picks TCG) a boot takes seconds, not milliseconds. Chromium is left out of the guest's desktop here
(`chromium=False`): under emulation it only slows the other checks; the image contains it (tests/image) and the
selftest test runs it. What is checked: the `process` and `kernel` stages, the agent's /health over the fabric, an
RFB handshake with the guest's x11vnc, then destroy → no QEMU process, no TAP, no workdir; destroy is idempotent.
Failure paths: a missing image names `hearth image build`; QEMU that cannot start and a guest that panics both fail
fast with the reason and leave nothing behind.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.errors import DriverError
from hearth.fabric import netlink
from hearth.fabric.fabric import Fabric
from hearth.guest.layout import GuestImage
from hearth.image import cpio
from hearth.image.build import BuiltImage
from hearth.lifecycle import readiness
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.qemu import QemuDriver
from hearth.sandbox.qemu import accel as accel_probe
from hearth.sandbox.qemu.cmdline import Files
from hearth.sandbox.qemu.driver import find_qemu
from tests.sandbox.specs import spec_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
async def fabric(make_settings: Callable[..., Settings]) -> AsyncIterator[Settings]:
    settings = make_settings(HEARTH_DRIVER="qemu")
    fab = Fabric(settings)
    await fab.up()
    try:
        yield settings
    finally:
        await fab.down(force=True)


def leftovers(settings: Settings, spec: SandboxSpec) -> list[str]:
    found = []
    if netlink.netns_exists(settings.fabric_netns):
        with netlink.ns(settings.fabric_netns) as fab:
            if netlink.link_index(fab, spec.slot.tap_name) is not None:
                found.append(f"tap {spec.slot.tap_name}")
    if spec.workdir.exists():
        found.append(f"dir {spec.workdir}")
    pid = find_qemu(Files(spec.workdir))
    if pid is not None:
        found.append(f"qemu pid {pid}")
    return found


def accels() -> list[str]:
    """TCG always; KVM too when a real boot under KVM works on this host (never assumed)."""
    return ["tcg", "kvm"]


@pytest.mark.parametrize("accel", accels())
async def test_real_boot_agent_rfb_then_nothing_left(fabric: Settings, image: BuiltImage, accel: str) -> None:
    settings = fabric
    if accel == "kvm":
        found = await asyncio.to_thread(accel_probe.probe, settings.data_dir, image.guest_image)
        if not found.kvm_ok:
            pytest.skip(f"KVM does not boot guests here: {found.reason}")
    drv = QemuDriver(settings, image.guest_image, accel=accel)  # type: ignore[arg-type]
    spec = spec_for(settings)
    t0 = time.monotonic()
    stages: dict[str, float] = {}

    def mark(stage: str) -> None:
        stages[stage] = round(time.monotonic() - t0, 3)

    try:
        info = await drv.start(spec, mark)
        assert info.details["accel"] == accel
        assert list(stages) == ["process", "kernel"]
        assert await drv.alive(spec)
        assert find_qemu(Files(spec.workdir)) == info.pid
        target = readiness.Target(settings.fabric_netns, str(spec.slot.ip), spec.rfb_port, spec.agent_port)
        deadline = time.monotonic() + 180
        health = await readiness.wait_display(target, deadline)
        mark("display")
        assert health["display"], health
        await readiness.wait_vnc(target, deadline)
        mark("vnc")
        init = await readiness.wait_rfb(target, deadline)
        mark("rfb")
        assert (init.width, init.height) == (1280, 800)
        console = drv.console_tail(spec)
        assert "hearth-init: started" in console and "hearth-init: eth0 configured" in console
        assert spec.secret not in console, "the secret must never reach the console"
        overlay = Files(spec.workdir).overlay.stat().st_blocks * 512
        golden = image.guest_image.rootfs.stat().st_blocks * 512
        assert overlay < golden / 4, "the per-sandbox disk is an overlay, not a copy"
        print(f"\n{accel} boot stages (s since start): {stages}; overlay {overlay >> 20} MiB")
    finally:
        t1 = time.monotonic()
        await drv.destroy(spec)
        print(f"{accel} destroy: {time.monotonic() - t1:.2f}s")
    assert await asyncio.to_thread(leftovers, settings, spec) == []
    assert not await drv.alive(spec)
    await drv.destroy(spec)  # already gone: success


async def test_destroy_from_the_spec_alone(fabric: Settings, image: BuiltImage) -> None:
    """A controller that crashed and restarted knows only the spec: a fresh driver finds and stops the VM."""
    settings = fabric
    spec = spec_for(settings, 1)
    first = QemuDriver(settings, image.guest_image, accel="tcg")
    info = await first.start(spec, lambda _stage: None)
    try:
        second = QemuDriver(settings, image.guest_image, accel="tcg")
        assert await second.alive(spec)
        await second.destroy(spec)
        assert await asyncio.to_thread(leftovers, settings, spec) == []
        assert not Path(f"/proc/{info.pid}/cmdline").exists() or not await second.alive(spec)
    finally:
        await first.destroy(spec)
    assert await asyncio.to_thread(leftovers, settings, spec) == []


async def test_missing_image_names_the_build_command(fabric: Settings, tmp_path: Path) -> None:
    settings = fabric
    missing = GuestImage(kernel=tmp_path / "bzImage", initrd=tmp_path / "initrd.img", rootfs=tmp_path / "rootfs.ext4")
    drv = QemuDriver(settings, missing, accel="tcg")
    spec = spec_for(settings)
    with pytest.raises(DriverError) as err:
        await drv.start(spec, lambda _stage: None)
    assert "hearth image build" in err.value.reason
    assert await asyncio.to_thread(leftovers, settings, spec) == []


async def test_qemu_that_cannot_start_fails_fast_and_leaves_nothing(
    fabric: Settings, image: BuiltImage, tmp_path: Path
) -> None:
    settings = fabric
    bogus = tmp_path / "bzImage"
    bogus.write_bytes(b"not a kernel" * 100)
    img = GuestImage(kernel=bogus, initrd=image.guest_image.initrd, rootfs=image.guest_image.rootfs)
    drv = QemuDriver(settings, img, accel="tcg")
    spec = spec_for(settings)
    t0 = time.monotonic()
    with pytest.raises(DriverError) as err:
        await drv.start(spec, lambda _stage: None)
    assert "QEMU exited" in err.value.reason, err.value.reason
    print(f"QEMU exit noticed after {time.monotonic() - t0:.2f}s")  # "QEMU exited": not a boot timeout
    assert await asyncio.to_thread(leftovers, settings, spec) == []


async def test_guest_panic_fails_fast_with_the_console_line(
    fabric: Settings, image: BuiltImage, tmp_path: Path
) -> None:
    """An initramfs without our /init and modules: the kernel finds no driver for /dev/vda and panics; start says so
    at once (not after a timeout)."""
    settings = fabric
    base = image.guest_image
    initrd = tmp_path / "empty.img"
    initrd.write_bytes(cpio.archive([cpio.directory("dev")]))
    drv = QemuDriver(settings, GuestImage(kernel=base.kernel, initrd=initrd, rootfs=base.rootfs), accel="tcg")
    spec = spec_for(settings)
    marks: list[str] = []
    with pytest.raises(DriverError) as err:
        await drv.start(spec, marks.append)
    assert marks == ["process"]
    assert "Kernel panic" in err.value.reason or "exited" in err.value.reason, err.value.reason
    assert await asyncio.to_thread(leftovers, settings, spec) == []
    shutil.rmtree(tmp_path, ignore_errors=True)


async def test_selftest_through_the_controller_and_gateway(
    image: BuiltImage, make_settings: Callable[..., Settings]
) -> None:
    """`hearth selftest --driver qemu`: the real controller path (API → session → QEMU → readiness → gateway →
    first frame over the WebSocket), Chromium included; prints the stage timings; nothing left afterwards."""
    from rich.console import Console

    from hearth.cli.selftest import print_result, run_driver_selftest

    base = make_settings(HEARTH_IMAGE_DIR=str(image.path))
    out = Console(width=120)
    res = await run_driver_selftest("qemu", base, 240.0, True, out)
    print_result(out, res)
    assert res.ok, (res.problems, res.leftovers)
    assert res.details["driver"] == "qemu"
    for stage in ("process", "kernel", "agent", "display", "vnc", "rfb", "first_frame"):
        assert stage in res.timings, res.timings
    assert res.timings["kernel"] <= res.timings["display"] <= res.timings["rfb"] <= res.timings["first_frame"]
