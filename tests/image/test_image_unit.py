"""Pure parts of the image build: content hash, cpio, vmlinux extraction, initramfs modules, config drive, guest
boot script, guest shell scripts."""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import os
import shutil
import struct
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import lz4.block
import pytest

from hearth.fabric.slot import slot_for
from hearth.guest import configdrive, hearth_boot
from hearth.guest import files as guest
from hearth.image import build, cpio, initramfs
from hearth.image.build import current_spec
from hearth.image.spec import ImageSpec, content_hash, tree_digests
from hearth.image.vmlinux import ELF_MAGIC, LZ4_LEGACY_MAGIC, ExtractError, extract_vmlinux
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.firecracker.plan import read_config_drive

# ---- content hash ---------------------------------------------------------------------------------------------------


def test_hash_is_stable_and_covers_every_input() -> None:
    base = ImageSpec(guest_files={"/sbin/hearth-init": "a"}, agent_files={"hearth_agent/x.py": "b"})
    assert base.hash == ImageSpec(guest_files={"/sbin/hearth-init": "a"}, agent_files={"hearth_agent/x.py": "b"}).hash
    variants = [
        dataclasses.replace(base, chromium=False),
        dataclasses.replace(base, suite="trixie"),
        dataclasses.replace(base, kernel_package="linux-image-amd64"),
        dataclasses.replace(base, extra_packages=("xdotool",)),
        dataclasses.replace(base, build_version=base.build_version + 1),
        dataclasses.replace(base, guest_files={"/sbin/hearth-init": "changed"}),
        dataclasses.replace(base, agent_files={"hearth_agent/x.py": "changed"}),
        dataclasses.replace(base, agent_files={"hearth_agent/x.py": "b", "hearth_agent/new.py": "c"}),
    ]
    hashes = {v.hash for v in variants}
    assert base.hash not in hashes and len(hashes) == len(variants)


def test_hash_ignores_order_of_inputs() -> None:
    a = ImageSpec(agent_files={"a": "1", "b": "2"}, extra_packages=("x", "y"))
    b = ImageSpec(agent_files={"b": "2", "a": "1"}, extra_packages=("y", "x"))
    assert a.hash == b.hash
    assert content_hash({"x": 1, "y": 2}) == content_hash({"y": 2, "x": 1})


def test_current_spec_digests_the_agent_and_guest_files(tmp_path: Path) -> None:
    spec = current_spec()
    assert any(k.startswith("hearth_agent/") for k in spec.agent_files)
    assert "hearth_agent/__main__.py" in spec.agent_files
    assert guest.INIT_PATH in spec.guest_files and guest.BOOT_PATH in spec.guest_files
    assert "chromium" in spec.packages and "chromium" not in current_spec(chromium=False).packages
    # tree digests: a changed file changes its digest; bytecode is ignored
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    one = tree_digests(tmp_path, "pkg")
    assert list(one) == ["pkg/m.py"]
    (tmp_path / "m.py").write_text("x = 2\n")
    assert tree_digests(tmp_path, "pkg") != one


def test_forbidden_network_managers_are_never_requested() -> None:
    from hearth.image.spec import FORBIDDEN_PACKAGES

    for chromium in (True, False):
        assert not set(current_spec(chromium=chromium).packages) & set(FORBIDDEN_PACKAGES)


# ---- cpio -----------------------------------------------------------------------------------------------------------


def test_cpio_roundtrip_and_determinism(tmp_path: Path) -> None:
    entries = [
        cpio.directory("bin"),
        cpio.file("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.chardev("dev/console", 5, 1),
        cpio.file("init", b"#!/bin/sh\n", 0o755),
    ]
    raw = cpio.archive(entries)
    assert cpio.archive(entries) == raw
    assert cpio.read_names(raw) == ["bin", "bin/busybox", "bin/sh", "dev/console", "init"]
    assert cpio.read_names(cpio.gzipped(raw)) == cpio.read_names(raw)
    if shutil.which("cpio"):  # the reference implementation agrees
        done = subprocess.run(["cpio", "-it"], input=raw, capture_output=True, check=True)
        assert done.stdout.decode().split() == ["bin", "bin/busybox", "bin/sh", "dev/console", "init"]


# ---- vmlinux --------------------------------------------------------------------------------------------------------

FAKE_ELF = ELF_MAGIC + b"\x02\x01\x01" + b"\0" * 57 + bytes(range(256)) * 400


def _bzimage(payload: bytes) -> bytes:
    return b"MZ" + b"\x90" * 5000 + payload + struct.pack("<I", len(FAKE_ELF)) + b"\0" * 100


def _lz4_legacy(data: bytes) -> bytes:
    out = struct.pack("<I", LZ4_LEGACY_MAGIC)
    for i in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[i : i + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


@pytest.mark.parametrize(
    "compress",
    [
        pytest.param(lambda d: gzip.compress(d, mtime=0), id="gzip"),
        pytest.param(lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32), id="xz"),
        pytest.param(_lz4_legacy, id="lz4-legacy"),
    ],
)
def test_extract_vmlinux(compress: object) -> None:
    assert callable(compress)
    elf, _how = extract_vmlinux(_bzimage(compress(FAKE_ELF)))
    assert elf.startswith(ELF_MAGIC) and elf == FAKE_ELF


def test_extract_vmlinux_refuses_non_kernels() -> None:
    with pytest.raises(ExtractError):
        extract_vmlinux(b"MZ" + b"\0" * 4096)
    assert extract_vmlinux(FAKE_ELF) == (FAKE_ELF, "none")


# ---- initramfs modules ----------------------------------------------------------------------------------------------


def _module(path: Path, depends: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0name=x\0")


def test_modules_resolve_dependencies_first(tmp_path: Path) -> None:
    moddir = tmp_path / "6.1.0-test"
    k = moddir / "kernel/drivers"
    _module(k / "virtio/virtio.ko", "virtio_ring")
    _module(k / "virtio/virtio_ring.ko", "")
    _module(k / "virtio/virtio_pci.ko", "virtio,virtio_ring")
    _module(k / "net/virtio_net.ko", "net_failover,virtio,virtio_ring")
    _module(k / "net/net_failover.ko", "failover")
    _module(k / "net/failover.ko", "")
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    mods = initramfs.resolve(moddir, ("virtio_pci", "virtio_net", "ext4"))
    names = [n for n, _ in mods.ordered]
    assert set(names) == {"virtio", "virtio_ring", "virtio_pci", "virtio_net", "net_failover", "failover"}
    for mod, dep in [("virtio", "virtio_ring"), ("virtio_pci", "virtio"), ("virtio_net", "net_failover")]:
        assert names.index(dep) < names.index(mod)
    assert mods.builtin == ("ext4",) and mods.missing == ()
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    data, _ = initramfs.build(moddir, busybox, ("virtio_pci", "virtio_net"))
    members = cpio.read_names(data)
    assert {"init", "bin/busybox", "lib/modules/virtio_net.ko", "lib/modules/load.order"} <= set(members)
    with pytest.raises(ValueError, match="not_there"):
        initramfs.build(moddir, busybox, ("not_there",))


# ---- config drive and the guest's boot script ----------------------------------------------------------------------


def _spec() -> SandboxSpec:
    slot = slot_for(
        "hearth", IPv4Network("192.168.100.0/24"), IPv4Address("192.168.100.1"), IPv4Address("192.168.100.2"), 3
    )
    return SandboxSpec("sess", slot, Path("/nonexistent"), "s3cret", chromium=False)


def test_config_drive_format_is_shared_with_firecracker() -> None:
    data = configdrive.encode(configdrive.document(_spec(), 8700))
    assert len(data) % configdrive.BLOCK == 0 and data.startswith(configdrive.MAGIC)
    doc = configdrive.decode(data)
    assert doc == read_config_drive(data)  # the Firecracker driver's decoder reads ours
    assert doc["secret"] == "s3cret" and doc["chromium"] is False
    assert "ip" not in doc  # one guest network mechanism: the kernel ip= argument
    assert doc["callback"] == "http://192.168.100.1:8700"


def test_boot_script_builds_the_agent_config(tmp_path: Path) -> None:
    drive = tmp_path / "vdb"
    fc_style = {"version": 1, "secret": "x", "session_id": "s", "agent_port": 8080, "rfb_port": 5900}
    drive.write_bytes(configdrive.encode(fc_style))
    cmd = hearth_boot.parse_cmdline(
        "console=ttyS0 ro hearth.config=/dev/vdb ip=192.168.100.9::192.168.100.1:255.255.255.0::eth0:off"
    )
    assert cmd["hearth.config"] == "/dev/vdb" and cmd["ro"] == ""
    cfg = hearth_boot.agent_config(hearth_boot.read_drive(str(drive), timeout=0.1), cmd)
    assert cfg["ip"] == "192.168.100.9"  # from ip=, when the drive has none (Firecracker's drive)
    assert cfg["callback"] == "http://192.168.100.1:8700" and "desktop" not in cfg  # the agent's default: a desktop
    ours = configdrive.document(_spec(), 8711)
    drive.write_bytes(configdrive.encode(ours))
    cfg = hearth_boot.agent_config(hearth_boot.read_drive(str(drive), timeout=0.1), cmd)
    assert cfg["ip"] == "192.168.100.9" and cfg["callback"].endswith(":8711")  # ip= always; the drive's callback
    drive.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="magic"):
        hearth_boot.read_drive(str(drive), timeout=0.1)
    with pytest.raises(FileNotFoundError):
        hearth_boot.read_drive(str(tmp_path / "missing"), timeout=0.05)
    fd = hearth_boot.config_pipe(cfg)  # no file: a pipe the agent reads once
    with os.fdopen(fd) as pipe:
        assert json.loads(pipe.read())["secret"] == "s3cret"


def test_ip_argument_parsing() -> None:
    assert hearth_boot.parse_ip_arg("10.0.0.2::10.0.0.1:255.255.255.0::eth0:off") == {
        "client": "10.0.0.2",
        "gateway": "10.0.0.1",
        "netmask": "255.255.255.0",
        "hostname": "",
        "device": "eth0",
    }
    assert hearth_boot.parse_ip_arg("")["client"] == ""


@pytest.mark.parametrize("script", [guest.HEARTH_INIT, guest.INITRAMFS_INIT], ids=["hearth-init", "initramfs-init"])
def test_guest_shell_scripts_parse(script: str, tmp_path: Path) -> None:
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell is not None
    path = tmp_path / "s"
    path.write_text(script)
    subprocess.run([shell, "-n", str(path)], check=True)
    assert "ip=" in script or "switch_root" in script


def test_one_network_mechanism_in_the_guest_files() -> None:
    """eth0 is configured from the kernel's ip= argument only: no DHCP client, no networkd or ifupdown calls."""
    files = b"\n".join(guest.guest_files().values()).decode()
    for other in ("dhclient", "udhcpc", "networkctl", "ifup ", "nmcli", "netplan", "systemd-networkd"):
        assert other not in files


def test_agent_drift_names_the_files_an_older_image_lacks(tmp_path: Path) -> None:
    assert build.agent_drift(tmp_path) == []  # no image: nothing to compare
    spec = build.current_spec()
    (tmp_path / build.MANIFEST).write_text(json.dumps({"inputs": spec.inputs()}))
    assert build.agent_drift(tmp_path) == []  # built from this tree
    older = dict(spec.agent_files)
    changed = sorted(older)[0]
    older[changed] = "0" * 64
    gone = "hearth_agent/only_in_the_old_image.py"
    older[gone] = "1" * 64
    (tmp_path / build.MANIFEST).write_text(json.dumps({"inputs": {"agent_files": older}}))
    assert build.agent_drift(tmp_path) == sorted([changed, gone])


def test_hearth_example_only_in_images_built_for_tests() -> None:
    prod, test = current_spec(), current_spec(for_tests=True)
    assert not any(p.startswith("hearth_example/") for p in prod.agent_files)
    assert any(p.startswith("hearth_example/") for p in test.agent_files)
    assert any(p.startswith("hearth_agent/") for p in prod.agent_files)
    assert prod.hash != test.hash
