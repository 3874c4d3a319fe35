"""Driver choice: `HEARTH_DRIVER=auto` picks the first driver that really works on this host — firecracker, then
qemu with KVM, then netns — and says why the others were skipped (`hearth drivers`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hearth.config import Settings
from hearth.errors import DriverError, HearthError, Hop
from hearth.guest.layout import GuestImage
from hearth.sandbox.base import Driver

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    driver: Driver
    skipped: dict[str, str] = field(default_factory=dict)


def vm_image(settings: Settings) -> GuestImage:
    return GuestImage.at(settings.images, present_only=True)


def _firecracker(settings: Settings) -> Driver:
    from hearth.sandbox.firecracker import FirecrackerDriver, JailerConfig, MachineShape

    jailer = (
        JailerConfig(binary=settings.jailer_bin, uid=settings.jailer_uid, gid=settings.jailer_gid)
        if settings.jailer_bin
        else None
    )
    drv = FirecrackerDriver(
        settings,
        vm_image(settings),
        settings.firecracker_bin,
        jailer,
        machine=MachineShape(settings.vm_vcpus, settings.vm_mem_mib),
    )
    drv.preflight(fabric=False)
    return drv


def _qemu(settings: Settings) -> Driver:
    try:
        from hearth.sandbox.qemu.select import qemu_driver
    except ImportError:
        raise DriverError(Hop.DRIVER, "the QEMU driver is not part of this build", "use HEARTH_DRIVER=netns") from None
    drv: Driver = qemu_driver(settings, vm_image(settings), require_kvm=settings.driver == "auto")
    return drv


def _netns(settings: Settings) -> Driver:
    from hearth.sandbox.netns import NetnsDriver

    return NetnsDriver(settings)


def _loopback(settings: Settings) -> Driver:
    from hearth.sandbox.loopback import LoopbackDriver  # tests only: never chosen by `auto` (hearth/config/check.py)

    return LoopbackDriver(settings)


BUILDERS: dict[str, Callable[[Settings], Driver]] = {
    "firecracker": _firecracker,
    "qemu": _qemu,
    "netns": _netns,
    "loopback": _loopback,
}


def warn_if_stale(settings: Settings, driver: Driver) -> None:
    """VM drivers boot the agent baked into the image: say so when the image predates this hearth's agent."""
    if driver.offers.controller_agent:
        return  # runs the controller's own guest package over the image's
    from hearth.image.build import agent_drift

    drift = agent_drift(settings.images)
    if drift:
        log.warning(
            "the guest image's agent differs from this hearth's (%d files, e.g. %s): run `hearth image build`",
            len(drift),
            drift[0],
        )


def choose_driver(settings: Settings) -> Choice:
    if settings.driver != "auto":
        drv = BUILDERS[settings.driver](settings)
        warn_if_stale(settings, drv)
        return Choice(drv)
    skipped: dict[str, str] = {}
    for name in ("firecracker", "qemu", "netns"):
        if settings.sandbox_cgroup is not None and name != "netns":
            skipped[name] = f"HEARTH_SANDBOX_CGROUP is set: only netns sandboxes join it ({name} VMs would not)"
            continue
        try:
            drv = BUILDERS[name](settings)
        except HearthError as exc:
            skipped[name] = exc.reason
        else:
            warn_if_stale(settings, drv)
            return Choice(drv, skipped)
    raise DriverError(
        Hop.DRIVER,
        "no sandbox driver works on this host: " + "; ".join(skipped.values()),
        "run scripts/setup.sh (bubblewrap for netns)",
    )
