"""Driver choice: `HEARTH_DRIVER=auto` picks the first driver that really works on this host, and says why the
others were skipped."""

from __future__ import annotations

from dataclasses import dataclass, field

from hearth.config import Settings
from hearth.errors import DriverError, Hop
from hearth.sandbox.base import Driver


@dataclass(frozen=True)
class Choice:
    driver: Driver
    skipped: dict[str, str] = field(default_factory=dict)


def choose_driver(settings: Settings) -> Choice:
    from hearth.sandbox.netns import NetnsDriver

    skipped: dict[str, str] = {}
    if settings.driver in ("auto", "netns"):
        if settings.driver == "auto":
            skipped["firecracker"] = "not available in this build yet"
            skipped["qemu"] = "not available in this build yet"
        return Choice(NetnsDriver(settings), skipped)
    raise DriverError(
        Hop.DRIVER,
        f"HEARTH_DRIVER={settings.driver} is not available in this build",
        "set HEARTH_DRIVER=netns (or auto)",
    )
