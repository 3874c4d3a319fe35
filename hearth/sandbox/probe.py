"""Host probes the driver choice (`hearth.sandbox.select`, `hearth drivers`) calls: can this driver run here, and
if not, why. Probes boot for real where looking is not enough (a /dev/kvm that exists can still crash guests)."""

from __future__ import annotations

from hearth.config import Settings
from hearth.sandbox.qemu import accel as accel_probe
from hearth.sandbox.qemu.driver import image_problems


def probe_qemu(settings: Settings) -> tuple[bool, str]:
    """(True, how) when QEMU runs VMs with KVM that really boots the guest kernel here — what `auto` may pick;
    (False, why) otherwise, saying whether TCG is available for an explicit HEARTH_DRIVER=qemu. Cached per host."""
    from hearth.sandbox.select import vm_image

    image = vm_image(settings)
    missing = image_problems(image)
    if missing:
        return False, f"the guest image is missing {', '.join(missing)}; run `hearth image build`"
    found = accel_probe.probe(settings.data_dir, image)
    if found.accel is None:
        return False, found.reason
    if found.kvm_ok:
        return True, f"KVM works ({found.reason})"
    return False, f"{found.reason}; HEARTH_DRIVER=qemu runs VMs under TCG (emulation: slow boots)"


def qemu_accel(settings: Settings) -> str | None:
    """ "kvm", "tcg" or None (QEMU unusable), as the boot probe found it."""
    from hearth.sandbox.select import vm_image

    return accel_probe.probe(settings.data_dir, vm_image(settings)).accel
