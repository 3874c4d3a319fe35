"""Building the QEMU driver for `hearth.sandbox.select` (driver choice)."""

from __future__ import annotations

from hearth.config import Settings
from hearth.errors import DriverError, Hop
from hearth.guest.layout import GuestImage
from hearth.sandbox.qemu import accel as accel_probe
from hearth.sandbox.qemu.driver import IMAGE_HINT, QemuDriver, image_problems


def qemu_driver(settings: Settings, image: GuestImage, require_kvm: bool = False) -> QemuDriver:
    """The QEMU driver for this host. `require_kvm` (HEARTH_DRIVER=auto): refuse TCG, which is too slow to be picked
    without being asked for — the reason says what the boot probe saw."""
    missing = image_problems(image)
    if missing:
        raise DriverError(Hop.DRIVER, f"qemu: the guest image is missing {', '.join(missing)}", IMAGE_HINT)
    found = accel_probe.probe(settings.data_dir, image)
    if found.accel is None:
        raise DriverError(Hop.DRIVER, f"qemu: {found.reason}", "install qemu-system-x86 (scripts/setup.sh)")
    if require_kvm and not found.kvm_ok:
        raise DriverError(
            Hop.DRIVER,
            f"qemu needs working KVM to be chosen automatically: {found.reason}",
            "set HEARTH_DRIVER=qemu to run VMs under TCG (emulation: slow boots)",
        )
    drv = QemuDriver(settings, image, found.accel)
    drv.accel_reason = found.reason
    return drv
