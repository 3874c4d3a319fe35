"""The Firecracker driver's validation list (its preflight): each check acquires nothing and names the fix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hearth.errors import DriverError, Hop
from hearth.fabric import netlink
from hearth.guest.layout import GuestImage
from hearth.sandbox.firecracker.plan import JailerConfig, kernel_of

_ELF = b"\x7fELF"


def resolve(name: str, what: str, setting: str, fix: str) -> str:
    """The absolute path of the executable `name` (a path, or a name on PATH)."""
    found = name if "/" in name else shutil.which(name)
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        where = "is not an executable file" if "/" in name else "is not on PATH"
        raise DriverError(Hop.DRIVER, f"{what} binary not found: {name!r} {where}", f"{fix}, or set {setting}")
    return os.path.abspath(found)


def binaries(binary: str, jailer: JailerConfig | None) -> tuple[str, str | None]:
    """The resolved (firecracker, jailer) paths; nsenter must be there when no jailer launches the VMM."""
    fc = resolve(
        binary,
        "firecracker",
        "HEARTH_FIRECRACKER_BIN to its path",
        "install the firecracker release binary (docs/firecracker.md)",
    )
    jl = None
    if jailer is not None:
        jl = resolve(
            jailer.binary,
            "jailer",
            "HEARTH_JAILER_BIN to its path",
            "install the jailer binary of the same firecracker release (docs/firecracker.md)",
        )
        if "firecracker" not in Path(fc).name:
            raise DriverError(
                Hop.DRIVER,
                f"the jailer only execs binaries whose file name contains 'firecracker'; got {fc}",
                "install or link the binary as e.g. /usr/local/bin/firecracker",
            )
    else:
        resolve("nsenter", "nsenter", "PATH", "install util-linux (apt-get install util-linux)")
    return fc, jl


def kvm(device: Path | None) -> None:
    """/dev/kvm is there and usable (None: not checked, the tests' fake VMM)."""
    if device is not None and not os.access(device, os.R_OK | os.W_OK):
        raise DriverError(
            Hop.DRIVER,
            f"{device} is missing or not read/writable",
            "run on a KVM host (bare metal or nested virtualisation on), load kvm_intel/kvm_amd, run as root",
        )


def kernel(image: GuestImage) -> None:
    """The guest kernel is an uncompressed ELF vmlinux."""
    path = kernel_of(image)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DriverError(
            Hop.DRIVER,
            f"guest kernel {path} cannot be read: {exc.strerror}",
            "build the image (HEARTH_IMAGE_DIR)",
        ) from exc
    if magic != _ELF:
        raise DriverError(
            Hop.DRIVER,
            f"guest kernel {path} is not an uncompressed ELF vmlinux (Firecracker cannot boot a bzImage)",
            "build `make vmlinux` (docs/firecracker.md) and point the image at it",
        )


def image_files(image: GuestImage) -> None:
    """The initrd (when given) and the root filesystem exist."""
    for label, path in (("initrd", image.initrd), ("root filesystem", image.rootfs)):
        if path is not None and not path.is_file():
            raise DriverError(Hop.DRIVER, f"guest {label} {path} does not exist", "build the image (HEARTH_IMAGE_DIR)")


def fabric(netns: str) -> None:
    """The fabric namespace exists (its bridge gets the TAP)."""
    if not netlink.netns_exists(netns):
        raise DriverError(
            Hop.FABRIC,
            f"fabric namespace {netns} does not exist",
            "run `hearth fabric up` (the controller does this at start)",
        )
