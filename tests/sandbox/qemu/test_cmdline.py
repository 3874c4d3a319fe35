"""The QEMU command line (pure): machine per accelerator, one TAP, copy-on-write root, no secret in argv."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hearth.fabric.slot import slot_for
from hearth.guest.layout import GuestImage
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.qemu.cmdline import Files, Machine, argv, kernel_append, overlay_argv, probe_argv

IMAGE = GuestImage(
    kernel=Path("/img/bzImage"), initrd=Path("/img/initrd.img"), rootfs=Path("/img/rootfs.ext4"), vmlinux=None
)
SECRET = "do-not-leak-3f9a"


def spec(index: int = 7) -> SandboxSpec:
    slot = slot_for(
        "hearth", IPv4Network("192.168.100.0/24"), IPv4Address("192.168.100.1"), IPv4Address("192.168.100.2"), index
    )
    return SandboxSpec("sess", slot, Path(f"/var/lib/hearth/sandboxes/{slot.netns}"), SECRET)


def opt(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_tcg_runs_q35_with_virtio_pci_inside_the_fabric() -> None:
    s = spec()
    a = argv(s, IMAGE, Machine("tcg", 2, 2048), "hearth", runas="nobody")
    assert a[:4] == ["nsenter", "--net=/run/netns/hearth", "--", "qemu-system-x86_64"]
    assert opt(a, "-machine") == ["q35"] and opt(a, "-accel") == ["tcg,thread=multi"]
    assert opt(a, "-m") == ["2048"] and opt(a, "-smp") == ["2"]
    assert opt(a, "-kernel") == ["/img/bzImage"] and opt(a, "-initrd") == ["/img/initrd.img"]
    devices = opt(a, "-device")
    assert devices == [
        "virtio-blk-pci,drive=root",
        "virtio-blk-pci,drive=config",
        f"virtio-net-pci,netdev=n0,mac={s.slot.mac}",
    ]
    assert opt(a, "-netdev") == ["tap,id=n0,ifname=hearth-t7,script=no,downscript=no,vhost=off"]
    wd = s.workdir
    drives = opt(a, "-drive")
    assert drives[0].startswith(f"if=none,id=root,file={wd}/root.qcow2,format=qcow2")
    assert drives[1] == f"if=none,id=config,file={wd}/config.img,format=raw,readonly=on"
    assert not any("rootfs.ext4" in d for d in drives), "the golden image is never attached directly"
    assert opt(a, "-qmp") == [f"unix:{wd}/qmp.sock,server=on,wait=off"]
    assert opt(a, "-pidfile") == [f"{wd}/qemu.pid"]
    assert opt(a, "-chardev") == [f"file,id=console,path={wd}/console.log"]
    assert "-no-reboot" in a and opt(a, "-runas") == ["nobody"]
    assert not any(SECRET in x for x in a), "the secret travels on the config drive only"


def test_kvm_runs_microvm_with_virtio_mmio() -> None:
    a = argv(spec(), IMAGE, Machine("kvm", 1, 1024), "fab")
    assert opt(a, "-machine")[0].startswith("microvm,") and opt(a, "-accel") == ["kvm"]
    assert opt(a, "-cpu") == ["host"]
    assert all(d.startswith(("virtio-blk-device", "virtio-net-device")) for d in opt(a, "-device"))
    assert "-runas" not in a


def test_kernel_command_line_has_one_network_setting() -> None:
    s = spec()
    line = kernel_append(s)
    assert f"ip={s.slot.ip}::192.168.100.1:255.255.255.0::eth0:off" in line
    assert line.count("ip=") == 1
    assert "init=/sbin/hearth-init" in line and "hearth.config=/dev/vdb" in line and "root=/dev/vda" in line
    assert "console=ttyS0" in line and "panic=1" in line
    assert kernel_append(s, " quiet ").endswith(" quiet")


def test_overlay_is_copy_on_write_over_the_golden_image() -> None:
    files = Files(Path("/w"))
    a = overlay_argv(IMAGE, files)
    assert a[:2] == ["qemu-img", "create"]
    assert opt(a, "-f") == ["qcow2"] and opt(a, "-F") == ["raw"] and opt(a, "-b") == ["/img/rootfs.ext4"]
    assert a[-1] == "/w/root.qcow2"


@pytest.mark.parametrize("accel", ["kvm", "tcg"])
def test_probe_boots_read_only_without_network(accel: str) -> None:
    a = probe_argv(IMAGE, accel, Path("/tmp/c.log"))  # type: ignore[arg-type]
    assert "-netdev" not in a and "nsenter" not in a
    assert "readonly=on" in opt(a, "-drive")[0]
    assert f"hearth.probe={accel}" in opt(a, "-append")[0]
