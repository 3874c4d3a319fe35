"""The planned API calls, checked against Firecracker's own OpenAPI spec (shared/firecracker/firecracker.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hearth.config import Settings
from hearth.errors import ConfigError
from hearth.guest.layout import GuestImage
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.firecracker import plan as P
from hearth.sandbox.firecracker.plan import ApiCall, JailerConfig, MachineShape
from tests.sandbox.firecracker.fchelpers import new_settings
from tests.sandbox.firecracker.fcspec import FirecrackerSpec, SpecViolation
from tests.sandbox.specs import spec_for

IMAGE = GuestImage(
    kernel=Path("/img/bzImage"),
    initrd=Path("/img/initrd.img"),
    rootfs=Path("/img/rootfs.ext4"),
    vmlinux=Path("/img/vmlinux"),
)


def planned(settings: Settings, spec: SandboxSpec, **kw: object) -> P.Plan:
    return P.plan(spec, IMAGE, settings.fabric_netns, MachineShape(), **kw)  # type: ignore[arg-type]


# ---- the validator itself can fail ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body", "why"),
    [
        ("PUT", "/machine-config", {"vcpu_count": 0.5, "mem_size_mib": 2048}, "not of type 'integer'"),
        ("PUT", "/machine-config", {"vcpu_count": 2.0, "mem_size_mib": 2048}, "not of type 'integer'"),
        ("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 2048}, "less than the minimum"),
        ("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 2048}, "greater than the maximum"),
        ("PUT", "/machine-config", {"vcpu_count": 3, "mem_size_mib": 2048, "smt": True}, "must be 1 or even"),
        ("PUT", "/machine-config", {"vcpu_count": 2}, "'mem_size_mib' is a required property"),
        ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 2048, "vcpus": 2}, "'vcpus' was unexpected"),
        ("PUT", "/boot-source", {"boot_args": "console=ttyS0"}, "'kernel_image_path' is a required property"),
        (
            "PUT",
            "/drives/rootfs",
            {"drive_id": "root", "path_on_host": "/x", "is_root_device": True, "is_read_only": False},
            "does not match the id from the body",
        ),
        ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True}, "needs path_on_host"),
        ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0"}, "'host_dev_name' is a required property"),
        ("PUT", "/actions", {"action_type": "Start"}, "is not one of"),
        ("PUT", "/actions", None, "the body is required"),
        ("PUT", "/drive/rootfs", {}, "no such path"),
        ("POST", "/actions", {"action_type": "InstanceStart"}, "no POST"),
        ("GET", "/version", {"x": 1}, "takes no body"),
    ],
)
def test_validator_rejects_what_firecracker_refuses(
    fc_spec: FirecrackerSpec, method: str, path: str, body: object, why: str
) -> None:
    errors = fc_spec.errors(method, path, body)
    assert any(why in e for e in errors), errors
    with pytest.raises(SpecViolation):
        fc_spec.check(method, path, body)


def test_the_seeds_fractional_vcpu_is_refused_twice(fc_spec: FirecrackerSpec) -> None:
    """0.5 vCPU broke the system hearth replaces: the spec rejects the body, and hearth never builds it."""
    assert fc_spec.errors("PUT", "/machine-config", {"vcpu_count": 0.5, "mem_size_mib": 2048, "smt": False})
    for bad in (0.5, 0, 33, True, "2"):
        with pytest.raises(ConfigError, match="HEARTH_VM_VCPUS"):
            MachineShape(vcpus=bad).check()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="HEARTH_VM_MEM_MIB"):
        MachineShape(mem_mib=256).check()
    with pytest.raises(ConfigError, match="odd with SMT"):
        MachineShape(vcpus=3, smt=True).check()


# ---- the plan ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("jailed", [False, True])
def test_every_planned_call_is_valid_per_the_spec(fc_spec: FirecrackerSpec, tmp_path: Path, jailed: bool) -> None:
    settings = new_settings(tmp_path)
    spec = spec_for(settings, 7)
    p = planned(settings, spec, metrics=True, jailer=JailerConfig() if jailed else None)
    assert p.calls, "nothing planned"
    for call in p.calls:
        assert fc_spec.errors(call.method, call.path, call.body) == [], call
        json.dumps(call.body)  # JSON-serialisable as sent


def test_order_logger_first_instance_start_last(tmp_path: Path) -> None:
    settings = new_settings(tmp_path)
    calls = planned(settings, spec_for(settings), metrics=True).calls
    paths = [c.path for c in calls]
    assert paths[0] == "/logger", "log first, so every later refusal is in firecracker.log"
    assert calls[-1] == ApiCall("PUT", "/actions", {"action_type": "InstanceStart"})
    assert [c for c in calls if c.path == "/actions"] == [calls[-1]], "exactly one action: the last"
    start = len(calls) - 1
    for needed in ("/boot-source", "/drives/rootfs", "/network-interfaces/eth0", "/machine-config", "/metrics"):
        assert paths.index(needed) < start, needed
    assert paths == [
        "/logger",
        "/metrics",
        "/boot-source",
        "/drives/rootfs",
        "/drives/config",
        "/network-interfaces/eth0",
        "/machine-config",
        "/actions",
    ]


def test_bodies_derive_from_slot_image_and_machine(tmp_path: Path) -> None:
    settings = new_settings(tmp_path)
    spec = spec_for(settings, 3)
    p = P.plan(spec, IMAGE, settings.fabric_netns, MachineShape(vcpus=4, mem_mib=3072))
    by = {c.path: c.body or {} for c in p.calls}
    assert by["/machine-config"] == {"vcpu_count": 4, "mem_size_mib": 3072, "smt": False}
    assert isinstance(by["/machine-config"]["vcpu_count"], int)
    boot = by["/boot-source"]
    assert boot["kernel_image_path"] == "/img/vmlinux", "Firecracker boots the uncompressed vmlinux, not the bzImage"
    assert boot["initrd_path"] == "/img/initrd.img"
    args = boot["boot_args"]
    assert args.startswith(P.BASE_BOOT_ARGS)
    assert args.endswith(spec.slot.kernel_ip_arg) and "ip=192.168.100.5::192.168.100.1:255.255.252.0::eth0:off" in args
    assert "root=/dev/vda rw" in args and "pci=off" in args and "hearth.config=/dev/vdb" in args
    assert by["/drives/rootfs"] == {
        "drive_id": "rootfs",
        "path_on_host": str(spec.workdir / "rootfs.ext4"),
        "is_root_device": True,
        "is_read_only": False,
    }
    assert by["/drives/config"]["is_read_only"] is True and by["/drives/config"]["is_root_device"] is False
    assert by["/network-interfaces/eth0"] == {
        "iface_id": "eth0",
        "host_dev_name": spec.slot.tap_name,
        "guest_mac": spec.slot.mac,
    }
    assert by["/logger"]["log_path"] == str(spec.workdir / "firecracker.log")
    assert p.argv == (
        "nsenter",
        f"--net=/run/netns/{settings.fabric_netns}",
        "--",
        "firecracker",
        "--id",
        spec.slot.netns,
        "--api-sock",
        str(spec.workdir / "fc.sock"),
    )


def test_no_initrd_means_no_initrd_path(tmp_path: Path, fc_spec: FirecrackerSpec) -> None:
    settings = new_settings(tmp_path)
    image = GuestImage(kernel=Path("/img/vmlinux"), initrd=None, rootfs=Path("/img/rootfs.ext4"))
    p = P.plan(spec_for(settings), image, settings.fabric_netns, MachineShape())
    boot = next(c for c in p.calls if c.path == "/boot-source")
    assert "initrd_path" not in (boot.body or {})
    assert fc_spec.errors("PUT", "/boot-source", boot.body) == []


def test_secret_only_in_the_config_drive(tmp_path: Path) -> None:
    """Not on the kernel command line (world-readable /proc/cmdline; Firecracker logs PUT bodies at Info)."""
    settings = new_settings(tmp_path)
    spec = spec_for(settings)
    p = planned(settings, spec)
    everything = json.dumps(p.as_dict()) + " ".join(p.argv)
    assert spec.secret not in everything
    doc = P.read_config_drive(p.config_drive)
    assert doc["secret"] == spec.secret and doc["session_id"] == spec.session_id
    assert doc["rfb_port"] == spec.rfb_port and doc["screen"] == spec.screen
    assert len(p.config_drive) % 4096 == 0, "whole sectors (Firecracker sizes block devices in 512-byte sectors)"
    assert "ip" not in doc, "the guest network has one mechanism: the kernel ip= argument"
    with pytest.raises(ValueError, match="magic"):
        P.read_config_drive(b"\0" * 4096)


def test_jailed_paths_are_inside_the_chroot(tmp_path: Path) -> None:
    settings = new_settings(tmp_path)
    spec = spec_for(settings, 2)
    jail = JailerConfig(
        binary="/usr/local/bin/jailer",
        uid=123,
        gid=100,
        cgroup_version=2,
        cgroups=("cpu.max=100000 100000",),
        resource_limits=("no-file=1024",),
    )
    p = P.plan(spec, IMAGE, settings.fabric_netns, MachineShape(), binary="/opt/fc/firecracker", jailer=jail)
    lay = p.layout
    assert lay.jailed and lay.root == spec.workdir / "jail" / "firecracker" / spec.slot.netns / "root"
    assert lay.api_socket == lay.root / "fc.sock"
    for call in p.calls:
        for key in ("log_path", "kernel_image_path", "initrd_path", "path_on_host", "metrics_path"):
            if call.body and key in call.body:
                assert call.body[key] in ("/firecracker.log", "/vmlinux", "/initrd.img", "/rootfs.ext4", "/config.img")
    argv = list(p.argv)
    assert argv[0] == "/usr/local/bin/jailer"
    assert argv[argv.index("--id") + 1] == spec.slot.netns
    assert argv[argv.index("--exec-file") + 1] == "/opt/fc/firecracker"
    assert argv[argv.index("--uid") + 1] == "123" and argv[argv.index("--gid") + 1] == "100"
    assert argv[argv.index("--netns") + 1] == f"/run/netns/{settings.fabric_netns}"
    assert argv[argv.index("--chroot-base-dir") + 1] == str(spec.workdir / "jail")
    assert argv[argv.index("--cgroup-version") + 1] == "2"
    assert argv[argv.index("--cgroup") + 1] == "cpu.max=100000 100000"
    assert argv[argv.index("--resource-limit") + 1] == "no-file=1024"
    assert argv[-3:] == ["--", "--api-sock", "/fc.sock"]
    assert "--daemonize" not in argv and "--new-pid-ns" not in argv, "the pid we spawn must stay firecracker's"
    outside = P.plan(
        spec, IMAGE, settings.fabric_netns, MachineShape(), jailer=JailerConfig(chroot_base_dir=Path("/srv/jailer"))
    ).layout
    assert outside.jail_dir == Path("/srv/jailer/firecracker") / spec.slot.netns


def test_vm_id_is_a_valid_firecracker_id(tmp_path: Path) -> None:
    settings = new_settings(tmp_path).model_copy(update={"fabric_netns": "my_fab.ric"})
    spec = spec_for(settings, 12)
    assert P.vm_id(spec) == "my-fab-ric-s12"


def test_vmm_cmdline_matching() -> None:
    sock, ident = "/d/sandboxes/fab-s1/fc.sock", "fab-s1"
    yes = [
        ["nsenter", "--net=/run/netns/fab", "--", "/usr/bin/firecracker", "--id", ident, "--api-sock", sock],
        ["/usr/bin/firecracker", "--id", ident, "--api-sock", sock],
        ["/usr/bin/firecracker", f"--api-sock={sock}"],
        ["./firecracker", f"--id={ident}", "--start-time-us=1", "--start-time-cpu-us=1", "--api-sock", "/fc.sock"],
        ["jailer", "--id", ident, "--exec-file", "/usr/bin/firecracker", "--", "--api-sock", "/fc.sock"],
    ]
    no = [
        ["/usr/bin/firecracker", "--id", "fab-s10", "--api-sock", "/d/sandboxes/fab-s10/fc.sock"],
        ["/usr/bin/firecracker", "--api-sock", sock + ".old"],
        ["vim", sock],
        ["some-tool", "--id", ident],  # no --api-sock: not a VMM hearth started
        [],
    ]
    assert all(P.is_vmm_cmdline(a, sock, ident) for a in yes)
    assert not any(P.is_vmm_cmdline(a, sock, ident) for a in no)


# ---- the CLI ---------------------------------------------------------------------------------------------
def test_cli_plan_json_prints_the_calls_and_starts_nothing(tmp_path: Path, fc_spec: FirecrackerSpec) -> None:
    from hearth.cli.sandbox import sandbox_app

    env = {"HEARTH_DATA_DIR": str(tmp_path / "data"), "HEARTH_FABRIC_NETNS": "hearth-tplan"}
    result = CliRunner().invoke(sandbox_app, ["plan", "--driver", "firecracker", "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["slot"] == 0 and doc["guest_ip"] == "192.168.100.2"
    assert [c["path"] for c in doc["calls"]][-1] == "/actions"
    for c in doc["calls"]:
        assert fc_spec.errors(c["method"], c["path"], c["body"]) == [], c
    assert doc["argv"][:2] == ["nsenter", "--net=/run/netns/hearth-tplan"]
    assert not (tmp_path / "data").exists(), "a plan creates nothing"
    bad = CliRunner().invoke(sandbox_app, ["plan", "--json", "--vcpus", "0"], env=env)
    assert bad.exit_code == 2 and "HEARTH_VM_VCPUS" in bad.output
    frac = CliRunner().invoke(sandbox_app, ["plan", "--json", "--vcpus", "0.5"], env=env)
    assert frac.exit_code == 2
    other = CliRunner().invoke(sandbox_app, ["plan", "--driver", "netns"], env=env)
    assert other.exit_code == 2


def test_the_driver_plan_honours_hearth_callback_port(tmp_path: Path) -> None:
    """The agent's callback URL in the config drive carries HEARTH_CALLBACK_PORT, not the default."""
    from hearth.config import load_settings
    from hearth.sandbox.firecracker.driver import FirecrackerDriver

    base = new_settings(tmp_path)
    settings = load_settings(
        {
            "HEARTH_FABRIC_NETNS": base.fabric_netns,
            "HEARTH_DATA_DIR": str(base.data_dir),
            "HEARTH_CALLBACK_PORT": "8799",
        },
        env_file=None,
    )
    drv = FirecrackerDriver(settings, IMAGE, binary="/usr/bin/true", kvm_device=None)
    doc = P.read_config_drive(drv.plan(spec_for(settings)).config_drive)
    assert doc["callback"] == f"http://{settings.bridge_ip}:8799"
    assert P.DEFAULT_CALLBACK_PORT != 8799
