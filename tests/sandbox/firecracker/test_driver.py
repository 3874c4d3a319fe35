"""FirecrackerDriver end to end against the Firecracker stand-in, in a real fabric with a real TAP.

The firecracker binary cannot be obtained on this machine. In its place `binary=` points at a script named
`firecracker` that execs fake_firecracker.py: a real process, launched by the driver exactly as the real binary
would be (nsenter into the fabric namespace, or through the jailer stand-in), serving Firecracker's API on the
Unix socket per firecracker.yaml and opening the TAP like the real VMM. What these tests prove is the driver's
side of the contract: what it creates, what it sends in which order, how it fails and what it leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import hearth.sandbox.firecracker.driver as D
from hearth.config import Settings
from hearth.errors import ConfigError, DriverError, Hop
from hearth.fabric import netlink, ports
from hearth.guest.layout import GuestImage
from hearth.sandbox import procs as proc
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.firecracker import FirecrackerDriver, JailerConfig, MachineShape
from tests.sandbox.firecracker.fchelpers import FAKE, Fake, new_settings, pid_running
from tests.sandbox.firecracker.fcspec import FirecrackerSpec
from tests.sandbox.specs import spec_for
from tests.waits import eventually

MakeFake = Callable[..., Fake]


def driver(settings: Settings, image: GuestImage, fake: Fake, **kw: object) -> FirecrackerDriver:
    """The driver with the stand-in as its binary; no /dev/kvm check (the stand-in boots nothing)."""
    kw.setdefault("kvm_device", None)
    kw.setdefault("shutdown_grace", 1.0)
    return FirecrackerDriver(settings, image, binary=str(fake.binary), **kw)  # type: ignore[arg-type]


def tap_sync(settings: Settings, name: str) -> dict[str, object] | None:
    """The TAP as the fabric sees it: None when absent."""
    if not netlink.netns_exists(settings.fabric_netns):
        return None
    with netlink.ns(settings.fabric_netns) as h:
        idx = netlink.link_index(h, name)
        if idx is None:
            return None
        link = h.get_links(idx)[0]
        br = netlink.link_index(h, settings.bridge_device)
        return {
            "on_bridge": netlink.attr(link, "IFLA_MASTER") == br,
            "carrier": netlink.attr(link, "IFLA_CARRIER") == 1,  # 1 while a process holds the TAP open
        }


async def tap(settings: Settings, name: str) -> dict[str, object] | None:
    return await asyncio.to_thread(tap_sync, settings, name)  # pyroute2's sync API must not run on the loop


def vmm_pids(drv: FirecrackerDriver, spec: SandboxSpec) -> list[int]:
    return proc.find_pids(drv._matcher(drv.layout(spec)))


async def leftovers(settings: Settings, drv: FirecrackerDriver, spec: SandboxSpec) -> list[str]:
    out = []
    if await tap(settings, spec.slot.tap_name) is not None:
        out.append(f"TAP {spec.slot.tap_name}")
    if spec.workdir.exists():
        out.append(f"workdir {spec.workdir}: {sorted(p.name for p in spec.workdir.iterdir())}")
    if vmm_pids(drv, spec):
        out.append(f"processes {vmm_pids(drv, spec)}")
    return out


def exited(pid: int | None) -> bool:
    """Not running any more (gone, or a zombie about to be reaped by whoever is its parent)."""
    return pid is not None and (not pid_running(pid) or proc.is_zombie(pid))


# ---- success ------------------------------------------------------------------------------------------------
@pytest.mark.netns
async def test_start_sends_the_plan_and_destroy_removes_everything(
    fabric: Settings, image: GuestImage, make_fake: MakeFake, fc_spec: FirecrackerSpec, spec: SandboxSpec
) -> None:
    fake = make_fake()
    drv = driver(fabric, image, fake)
    marks: list[str] = []
    info = await drv.start(spec, marks.append)

    assert marks == ["process"]
    assert info.pid == fake.pid() and await drv.alive(spec)
    # exactly the planned calls, in order, each one valid per Firecracker's spec
    reqs = fake.requests()
    planned = drv.plan(spec).calls
    assert [(r["method"], r["path"], r["body"]) for r in reqs] == [("GET", "/version", None)] + [
        (c.method, c.path, c.body) for c in planned
    ]
    for r in reqs:
        assert fc_spec.errors(str(r["method"]), str(r["path"]), r["body"]) == [], r
    # the TAP: in the fabric, on the bridge, held open by the VMM process (which therefore runs in the fabric)
    assert await tap(fabric, spec.slot.tap_name) == {"on_bridge": True, "carrier": True}
    # files
    wd = spec.workdir
    assert stat.S_IMODE(wd.stat().st_mode) == 0o700
    rootfs = wd / "rootfs.ext4"
    assert rootfs.read_bytes()[:13] == b"golden-rootfs" and rootfs.stat().st_size == image.rootfs.stat().st_size
    assert info.details["rootfs_copy"] in ("reflink", "sparse-copy")
    assert rootfs.stat().st_blocks * 512 < 8 * 1024 * 1024, "the copy stays sparse"
    cfg = wd / "config.img"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600 and spec.secret.encode() in cfg.read_bytes()
    # the secret is nowhere else: not in argv, env, the API bodies (which Firecracker logs), the logs
    fc_log = (wd / "firecracker.log").read_text()
    assert 'request on "/boot-source" with body' in fc_log, "bodies are logged, so a secret in them would leak"
    for where in (fc_log, (wd / "console.log").read_text(), str(reqs)):
        assert spec.secret not in where
    argv = Path(f"/proc/{info.pid}/cmdline").read_bytes()
    env = Path(f"/proc/{info.pid}/environ").read_bytes()
    assert spec.secret.encode() not in argv + env
    assert b"HEARTH_" not in env, "the controller's settings/secrets are not passed to the VMM"

    await drv.destroy(spec)
    assert await leftovers(fabric, drv, spec) == []
    assert not pid_running(info.pid), "killed and reaped"
    assert not await drv.alive(spec)
    assert fake.requests()[-1]["body"] == {"action_type": "SendCtrlAltDel"}, "asked the guest first"


# ---- (a) binary missing ---------------------------------------------------------------------------------------
@pytest.mark.netns
@pytest.mark.parametrize("binary", ["firecracker-not-installed", "/nonexistent/bin/firecracker"])
async def test_binary_missing_names_the_fix_and_leaves_nothing(
    fabric: Settings, image: GuestImage, spec: SandboxSpec, binary: str
) -> None:
    drv = FirecrackerDriver(fabric, image, binary=binary, kvm_device=None)
    with pytest.raises(DriverError) as err:
        await drv.start(spec, lambda _: None)
    assert err.value.hop is Hop.DRIVER
    assert "firecracker binary not found" in err.value.message and binary in err.value.message
    assert "HEARTH_FIRECRACKER_BIN" in err.value.hint and "docs/firecracker.md" in err.value.hint
    assert await leftovers(fabric, drv, spec) == []


# ---- (b) stale socket -----------------------------------------------------------------------------------------
@pytest.mark.netns
async def test_stale_api_socket_is_removed_and_start_succeeds(
    fabric: Settings, image: GuestImage, make_fake: MakeFake, spec: SandboxSpec, tmp_path: Path
) -> None:
    spec.workdir.mkdir(parents=True)
    stale = spec.workdir / "fc.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the socket file of a VMM that died: nobody listens, the path stays
    # Control: the VMM refuses to start over an existing socket path (as Firecracker does).
    ctl = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE), "--api-sock", str(stale), stderr=asyncio.subprocess.PIPE
    )
    _, err = await ctl.communicate()
    assert ctl.returncode == 1 and b"Address in use" in err

    fake = make_fake()
    drv = driver(fabric, image, fake)
    info = await drv.start(spec, lambda _: None)
    assert info.pid == fake.pid()
    await drv.destroy(spec)
    assert await leftovers(fabric, drv, spec) == []


# ---- (c) API refusal --------------------------------------------------------------------------------------------
@pytest.mark.netns
async def test_api_error_unwinds_in_order(
    fabric: Settings, image: GuestImage, make_fake: MakeFake, spec: SandboxSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = "Invalid Memory Configuration: MmapRegion(Mmap(Os { code: 12, kind: OutOfMemory }))"
    fake = make_fake("--fake-fail", "PUT", "/machine-config", msg)
    drv = driver(fabric, image, fake)
    at_tap_removal: list[tuple[str, bool]] = []
    real_remove_port = ports.remove_port  # what the driver imported

    async def spy(settings: Settings, ifname: str) -> None:
        at_tap_removal.append((ifname, pid_running(fake.pid())))
        await real_remove_port(settings, ifname)

    monkeypatch.setattr(D, "remove_port", spy)
    with pytest.raises(DriverError) as err:
        await drv.start(spec, lambda _: None)
    assert msg in err.value.message and "PUT /machine-config" in err.value.message
    assert "HEARTH_VM_VCPUS" in err.value.hint
    assert at_tap_removal == [(spec.slot.tap_name, False)], "the process was killed *and reaped* before the TAP went"
    assert not pid_running(fake.pid())
    assert await leftovers(fabric, drv, spec) == []
    assert [r["path"] for r in fake.requests()][-1] == "/machine-config", "nothing sent after the refusal"


# ---- (d) the process exits during start ----------------------------------------------------------------------
@pytest.mark.netns
@pytest.mark.parametrize(
    ("knobs", "doing", "last_words"),
    [
        (("--fake-exit-on", "PUT", "/boot-source"), "while answering PUT /boot-source", "simulated crash"),
        (("--fake-exit-at-start",), "while opening its API socket", "before opening the API socket"),
    ],
)
async def test_process_exit_during_start_is_reported_and_cleaned(
    fabric: Settings,
    image: GuestImage,
    make_fake: MakeFake,
    spec: SandboxSpec,
    knobs: tuple[str, ...],
    doing: str,
    last_words: str,
) -> None:
    fake = make_fake(*knobs)
    drv = driver(fabric, image, fake)
    t0 = time.monotonic()
    with pytest.raises(DriverError) as err:
        await drv.start(spec, lambda _: None)
    print(f"exit noticed after {time.monotonic() - t0:.2f}s")  # the message names the exit, not a timeout
    assert "firecracker exited with code 1" in err.value.message and doing in err.value.message
    assert last_words in err.value.message, "the VMM's last words are in the reason"
    assert "console.log" in err.value.hint
    assert not pid_running(fake.pid())
    assert await leftovers(fabric, drv, spec) == []


# ---- (e) destroy is idempotent, and works from the spec alone ---------------------------------------------------
@pytest.mark.netns
async def test_destroy_twice_and_destroy_of_nothing(
    fabric: Settings, image: GuestImage, make_fake: MakeFake, spec: SandboxSpec, tmp_path: Path
) -> None:
    drv = driver(fabric, image, make_fake())
    await drv.start(spec, lambda _: None)
    await drv.destroy(spec)
    await drv.destroy(spec)
    assert await leftovers(fabric, drv, spec) == []
    await drv.destroy(spec_for(fabric, 9))  # never started
    gone = new_settings(tmp_path / "other")  # a fabric that does not exist at all
    await driver(gone, image, make_fake()).destroy(spec_for(gone, 0))


@pytest.mark.netns
async def test_destroy_from_the_spec_alone_after_a_controller_restart(
    fabric: Settings, image: GuestImage, make_fake: MakeFake, spec: SandboxSpec
) -> None:
    """Driver instance #2 knows nothing of #1's children: it finds the VMM by its argv; the guest ignores
    Ctrl-Alt-Del (no i8042), so SIGKILL follows after the grace period."""
    fake = make_fake("--fake-ignore-ctrl-alt-del")
    info = await driver(fabric, image, fake).start(spec, lambda _: None)
    again = driver(fabric, image, fake, shutdown_grace=0.3)
    assert await again.alive(spec)
    t0 = time.monotonic()
    await again.destroy(spec)
    assert time.monotonic() - t0 >= 0.3, "waited the grace period"
    assert exited(info.pid) and not await again.alive(spec)
    assert await leftovers(fabric, again, spec) == []


@pytest.mark.netns
async def test_start_reclaims_a_leftover_vmm_holding_the_slot(
    fabric: Settings, image: GuestImage, make_fake: MakeFake, spec: SandboxSpec
) -> None:
    """An orphan of a crashed controller holds this slot's TAP; a new start kills it (waits), then succeeds."""
    old, new = make_fake(), make_fake()
    first = await driver(fabric, image, old).start(spec, lambda _: None)
    second = await driver(fabric, image, new).start(spec, lambda _: None)
    assert exited(first.pid) and second.pid == new.pid()
    assert await tap(fabric, spec.slot.tap_name) == {"on_bridge": True, "carrier": True}
    await driver(fabric, image, new).destroy(spec)
    assert await leftovers(fabric, driver(fabric, image, new), spec) == []


@pytest.mark.netns
async def test_two_sandboxes_do_not_touch_each_other(fabric: Settings, image: GuestImage, make_fake: MakeFake) -> None:
    a, b = spec_for(fabric, 1), spec_for(fabric, 10)
    drv = driver(fabric, image, make_fake())
    await asyncio.gather(drv.start(a, lambda _: None), drv.start(b, lambda _: None))
    await drv.destroy(a)
    assert await drv.alive(b) and await tap(fabric, b.slot.tap_name) == {"on_bridge": True, "carrier": True}
    await drv.destroy(b)
    assert await leftovers(fabric, drv, a) == [] and await leftovers(fabric, drv, b) == []


# ---- the jailer -------------------------------------------------------------------------------------------------
@pytest.mark.netns
async def test_jailed_start_puts_every_file_in_the_chroot(
    fabric: Settings,
    image: GuestImage,
    make_fake: MakeFake,
    fake_jailer: Path,
    spec: SandboxSpec,
    fc_spec: FirecrackerSpec,
) -> None:
    """Through the jailer stand-in: API paths are chroot-relative, the files exist there, the writable ones
    belong to the jail's uid/gid, and the VMM is found and ended from the spec like an unjailed one."""
    fake = make_fake()
    jail = JailerConfig(binary=str(fake_jailer), uid=64000, gid=64000)
    drv = driver(fabric, image, fake, jailer=jail)
    info = await drv.start(spec, lambda _: None)
    lay = drv.layout(spec)
    assert info.pid == fake.pid() and info.details["jailed"] == "yes"
    assert lay.root == spec.workdir / "jail" / "firecracker" / spec.slot.netns / "root"
    for r in fake.requests():
        assert fc_spec.errors(str(r["method"]), str(r["path"]), r["body"]) == []
        body = r["body"]
        assert body is None or isinstance(body, dict)
        for value in (body or {}).values():
            if isinstance(value, str) and value.startswith("/") and " " not in value:
                assert (lay.root / value.lstrip("/")).exists(), f"{value} is not in the jail"
    assert (lay.root / "vmlinux").stat().st_ino == image.kernel.stat().st_ino, "kernel hard-linked, not copied"
    for name in ("rootfs.ext4", "config.img", "firecracker.log"):
        st = (lay.root / name).stat()
        assert (st.st_uid, st.st_gid) == (64000, 64000), name
    assert image.kernel.stat().st_uid == 0, "the shared image is never chowned"
    assert await tap(fabric, spec.slot.tap_name) == {"on_bridge": True, "carrier": True}
    await drv.destroy(spec)
    assert await leftovers(fabric, drv, spec) == [] and not pid_running(info.pid)


@pytest.mark.netns
async def test_jailed_start_fails_if_files_are_not_handed_to_the_jail_uid(
    fabric: Settings,
    image: GuestImage,
    make_fake: MakeFake,
    fake_jailer: Path,
    spec: SandboxSpec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control for the test above: without the chown the jailed VMM cannot open its disk, and the stand-in says so."""
    monkeypatch.setattr(os, "chown", lambda *a, **k: None)  # the driver calls os.chown
    drv = driver(fabric, image, make_fake(), jailer=JailerConfig(binary=str(fake_jailer), uid=64000, gid=64000))
    with pytest.raises(DriverError, match=r"firecracker\.log|rootfs\.ext4"):
        await drv.start(spec, lambda _: None)
    assert await leftovers(fabric, drv, spec) == []


# ---- preflight (no root needed) ------------------------------------------------------------------------------
def test_preflight_names_the_fix(tmp_path: Path, image: GuestImage, make_fake: MakeFake) -> None:
    settings = new_settings(tmp_path)
    fake = make_fake()
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"MZ" + b"\0" * 510)
    not_elf = GuestImage(kernel=bz, initrd=None, rootfs=image.rootfs)
    with pytest.raises(DriverError, match="not an uncompressed ELF vmlinux"):
        driver(settings, not_elf, fake).preflight()
    no_rootfs = GuestImage(kernel=image.kernel, initrd=None, rootfs=tmp_path / "missing.ext4")
    with pytest.raises(DriverError, match=r"root filesystem .* does not exist"):
        driver(settings, no_rootfs, fake).preflight()
    with pytest.raises(DriverError, match="is missing or not read/writable") as err:
        driver(settings, image, fake, kvm_device=tmp_path / "kvm").preflight()
    assert "KVM host" in err.value.hint
    with pytest.raises(DriverError, match=r"fabric namespace .* does not exist") as err:
        driver(settings, image, fake).preflight()
    assert err.value.hop is Hop.FABRIC and "hearth fabric up" in err.value.hint
    renamed = tmp_path / "fc-binary"
    os.link(fake.binary, renamed)
    with pytest.raises(DriverError, match="contains 'firecracker'"):
        FirecrackerDriver(
            settings, image, binary=str(renamed), jailer=JailerConfig(binary=str(fake.binary)), kvm_device=None
        ).preflight()


def test_fractional_vcpus_fail_at_construction(tmp_path: Path, image: GuestImage) -> None:
    with pytest.raises(ConfigError, match=r"HEARTH_VM_VCPUS=0\.5"):
        FirecrackerDriver(new_settings(tmp_path), image, machine=MachineShape(vcpus=0.5))  # type: ignore[arg-type]


@pytest.mark.netns
async def test_socket_path_over_the_unix_limit_is_refused_up_front(
    fabric: Settings, image: GuestImage, make_fake: MakeFake
) -> None:
    deep = fabric.model_copy(update={"data_dir": fabric.data_dir / ("d" * 80)})
    spec = spec_for(deep)
    drv = driver(deep, image, make_fake())
    with pytest.raises(DriverError, match="over the 107-byte limit") as err:
        await drv.start(spec, lambda _: None)
    assert err.value.hop is Hop.CONFIG and "HEARTH_DATA_DIR" in err.value.hint
    assert await leftovers(deep, drv, spec) == []


@pytest.mark.netns
async def test_cancelled_start_leaves_nothing(
    fabric: Settings, image: GuestImage, make_fake: MakeFake, spec: SandboxSpec
) -> None:
    """A session cancelled while its VM boots: the undo stack runs under cancellation too."""
    fake = make_fake("--fake-stall", "PUT", "/machine-config")
    drv = driver(fabric, image, fake)
    task = asyncio.create_task(drv.start(spec, lambda _: None))

    async def asked() -> bool:
        if task.done():
            raise RuntimeError(f"start ended before PUT /machine-config: {task}")  # not NOT_YET: fails at once
        return any(r["path"] == "/machine-config" for r in fake.requests())

    await eventually(asked, 10, "PUT /machine-config at the stand-in", interval=0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pid_running(fake.pid())
    assert await leftovers(fabric, drv, spec) == []


async def test_destroy_removes_the_jails_cgroup(
    tmp_path: Path, image: GuestImage, make_fake: MakeFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jailer leaves `<cgroup root>/<exec name>/<id>` behind when given --cgroup; destroy removes it."""
    monkeypatch.setattr(D, "CGROUP_ROOT", tmp_path / "cgroup")
    settings = new_settings(tmp_path)  # no fabric needed: destroy treats a missing one as already clean
    spec = spec_for(settings, 4)
    jail = JailerConfig(cgroup_version=2, cgroups=("cpu.max=100000 100000",))
    drv = driver(settings, image, make_fake(), jailer=jail)
    cg = tmp_path / "cgroup" / "firecracker" / spec.slot.netns
    cg.mkdir(parents=True)
    await drv.destroy(spec)
    assert not cg.exists() and cg.parent.exists()
    await drv.destroy(spec)  # twice: still fine
