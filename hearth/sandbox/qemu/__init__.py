"""The QEMU driver: sandboxes as VMs booting the golden image (microvm + KVM where KVM really works, q35 + TCG
otherwise)."""

from hearth.sandbox.qemu.driver import QemuDriver

__all__ = ["QemuDriver"]
