"""`hearth sandbox …`: what a driver would do, computed without starting anything."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hearth.cli.common import fail, settings_or_exit
from hearth.config import Settings
from hearth.errors import ConfigError
from hearth.fabric.slot import slot_for
from hearth.guest.layout import GuestImage
from hearth.sandbox import specs
from hearth.sandbox.base import SandboxSpec

sandbox_app = typer.Typer(help="Inspect sandbox drivers.", no_args_is_help=True)

# File names in an image directory (`hearth image build` output); override each with --kernel/--initrd/--rootfs.
IMAGE_KERNEL = "vmlinux"
IMAGE_INITRD = "initrd.img"
IMAGE_ROOTFS = "rootfs.ext4"


@sandbox_app.callback()
def _group() -> None:
    """Inspect sandbox drivers (a group even with one command: `hearth sandbox plan`)."""


def plan_spec(settings: Settings, slot_index: int, session_id: str | None = None) -> SandboxSpec:
    """The spec a controller with `settings` boots for a desktop session on slot `slot_index` — built by the sandbox
    manager's own builder (hearth/sandbox/specs.py), so the plan shows what a boot does. Its secret is fresh (it goes
    only into the config drive, never printed)."""
    slot = slot_for(
        settings.fabric_netns, settings.internal_network, settings.bridge_ip, settings.ip_pool_start, slot_index
    )
    owner = session_id or str(uuid.uuid4())
    return specs.build(settings, specs.egress_for(settings), owner, slot, secret=secrets.token_urlsafe(32))


@sandbox_app.command("plan")
def plan_cmd(
    driver: str = typer.Option("firecracker", "--driver", help="only `firecracker` plans API calls"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    slot_index: int = typer.Option(0, "--slot", min=0, help="hypothetical slot index"),
    image_dir: Path | None = typer.Option(None, help="image directory (default: <HEARTH_DATA_DIR>/image)"),
    kernel: Path | None = typer.Option(None, help="uncompressed vmlinux (default: <image-dir>/vmlinux)"),
    initrd: Path | None = typer.Option(None, help="initramfs (default: <image-dir>/initrd.img if present)"),
    rootfs: Path | None = typer.Option(None, help="ext4 root filesystem (default: <image-dir>/rootfs.ext4)"),
    vcpus: int = typer.Option(2, help="vCPUs (whole number, 1..32)"),
    mem_mib: int = typer.Option(2048, help="guest memory in MiB"),
    binary: str = typer.Option("firecracker", help="firecracker binary"),
    jailer: bool = typer.Option(False, help="plan a launch through the jailer"),
    jailer_binary: str = typer.Option("jailer", help="jailer binary"),
    jailer_uid: int = typer.Option(65534, help="uid the jailer drops to"),
    jailer_gid: int = typer.Option(65534, help="gid the jailer drops to"),
) -> None:
    """The exact ordered API calls (method, path, body) and launch command for a new sandbox. Starts nothing."""
    from hearth.sandbox.firecracker import FirecrackerDriver, JailerConfig, MachineShape

    if driver != "firecracker":
        fail(f"--driver {driver}: only the firecracker driver is planned by API calls; use --driver firecracker", 2)
    settings = settings_or_exit()
    base = image_dir or settings.data_dir / "image"
    default_initrd = base / IMAGE_INITRD
    image = GuestImage(
        kernel=kernel or base / IMAGE_KERNEL,
        initrd=initrd or (default_initrd if default_initrd.exists() else None),
        rootfs=rootfs or base / IMAGE_ROOTFS,
    )
    spec = plan_spec(settings, slot_index)
    slot = spec.slot
    jail = JailerConfig(binary=jailer_binary, uid=jailer_uid, gid=jailer_gid) if jailer else None
    try:
        drv = FirecrackerDriver(settings, image, binary, jail, machine=MachineShape(vcpus=vcpus, mem_mib=mem_mib))
        planned = drv.plan(spec)
    except ConfigError as exc:
        fail("; ".join(exc.problems), 2)
    missing = [str(p) for p in (image.kernel, image.initrd, image.rootfs) if p is not None and not p.exists()]
    doc = {"session_id": spec.session_id, "slot": slot_index, "guest_ip": str(slot.ip), **planned.as_dict()}
    doc["missing_files"] = missing
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    out = Console()
    out.print(f"[bold]launch[/] {' '.join(planned.argv)}")
    table = Table(title=f"firecracker API calls for slot {slot_index} ({slot.ip}, TAP {slot.tap_name})")
    for col in ("#", "method", "path", "body"):
        table.add_column(col)
    for i, call in enumerate(planned.calls, 1):
        table.add_row(str(i), call.method, call.path, json.dumps(call.body))
    out.print(table)
    for path in missing:
        out.print(f"[yellow]not found (fine for a plan, fatal for a start):[/] {path}")
