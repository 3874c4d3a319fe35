"""`hearth selftest`'s diagnostics for a boot that did not become ready: the guest console only from drivers that
offer one (every driver has `console_tail`, the netns driver's raises NotImplementedError; asking it used to turn a
failed netns selftest into that exception and skip the session's cancel). Real driver objects, no boot."""

from __future__ import annotations

from collections.abc import Callable

from hearth.cli.selftest import guest_console
from hearth.config import Settings
from hearth.guest.layout import GuestImage
from hearth.sandbox.netns import NetnsDriver
from hearth.sandbox.qemu.console import CONSOLE
from hearth.sandbox.qemu.driver import QemuDriver
from tests.sandbox.specs import spec_for


def test_netns_driver_has_no_console_and_is_not_asked(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    drv = NetnsDriver(settings)
    assert hasattr(drv, "console_tail")  # why the old `hasattr` check could not tell the drivers apart
    assert guest_console(drv, spec_for(settings)) is None


def test_qemu_driver_console_tail_is_returned(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_DRIVER="qemu")
    image = GuestImage.at(settings.data_dir / "no-image")
    drv = QemuDriver(settings, image, accel="tcg")
    spec = spec_for(settings)
    spec.workdir.mkdir(parents=True)
    lines = [f"line {i}" for i in range(400)]
    (spec.workdir / CONSOLE).write_text("\n".join(lines) + "\nKernel panic - not syncing: no init\n")
    console = guest_console(drv, spec, limit=200)
    assert console is not None
    assert console.endswith("Kernel panic - not syncing: no init\n")
    assert "line 0\n" not in console and len(console.encode()) <= 200
