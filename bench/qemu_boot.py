"""QEMU boot stages over N boots of the golden image: process (QEMU up, QMP answers), kernel (our init runs),
agent (/health answers), display (Xvfb up), vnc (port open), rfb (handshake done) — seconds since start, per boot,
then median / max per stage.

    sudo .venv/bin/python bench/qemu_boot.py -n 5 [--accel tcg|kvm] [--chromium] [--image DIR] [--append quiet]

Uses the current image (`<HEARTH_DATA_DIR>/image`, or --image; build it with `hearth image build`). Runs in a fabric
namespace of its own (`hearth-b<hex>`), one VM at a time; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from hearth.config import load_settings
from hearth.fabric.fabric import Fabric
from hearth.fabric.slot import slot_for
from hearth.image.build import guest_image
from hearth.lifecycle import readiness
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.qemu import QemuDriver

STAGES = ("process", "kernel", "agent", "display", "vnc", "rfb", "destroy")


async def boot_once(drv: QemuDriver, spec: SandboxSpec, netns: str) -> dict[str, float]:
    t0 = time.monotonic()
    at: dict[str, float] = {}

    def mark(stage: str) -> None:
        at[stage] = time.monotonic() - t0

    target = readiness.Target(netns, str(spec.slot.ip), spec.rfb_port, spec.agent_port)
    try:
        await drv.start(spec, mark)
        deadline = time.monotonic() + 300
        while True:  # first answer of /health, whatever the display's state
            try:
                status, _ = await readiness.http_get_json(netns, target.ip, target.agent_port, "/health", 1.0)
                if status == 200:
                    break
            except (OSError, TimeoutError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the agent never answered")
            await asyncio.sleep(0.02)
        mark("agent")
        await readiness.wait_desktop(target, deadline, mark)
    finally:
        t1 = time.monotonic()
        await drv.destroy(spec)
        at["destroy"] = time.monotonic() - t1
    return at


async def main(n: int, accel: str | None, chromium: bool, image_dir: Path | None, append: str) -> None:
    data = Path(tempfile.mkdtemp(prefix="hearth-bench-", dir="/var/tmp"))
    data.chmod(0o711)
    base = load_settings()
    settings = load_settings(
        {"HEARTH_FABRIC_NETNS": f"hearth-b{secrets.token_hex(3)}", "HEARTH_DATA_DIR": str(data)},
        env_file=None,
    )
    image = guest_image((image_dir or base.images).resolve())
    fabric = Fabric(settings)
    await fabric.up()
    try:
        drv = QemuDriver(settings, image, accel, extra_append=append)  # type: ignore[arg-type]
        print(f"accel {drv.accel} ({drv.accel_reason}); image {image.rootfs.parent}; chromium {chromium}")
        slot = slot_for(settings.fabric_netns, settings.internal_network, settings.bridge_ip, settings.ip_pool_start, 0)
        runs = []
        for i in range(n):
            spec = SandboxSpec(
                f"bench-{i}", slot, data / "sandboxes" / slot.netns, secrets.token_urlsafe(16), chromium=chromium
            )
            at = await boot_once(drv, spec, settings.fabric_netns)
            runs.append(at)
            print(f"boot {i + 1}: " + "  ".join(f"{s} {at[s]:.2f}" for s in STAGES if s in at), flush=True)
        print("\nstage      median     max   (seconds since start; destroy: its own duration)")
        for stage in STAGES:
            values = [r[stage] for r in runs if stage in r]
            if values:
                print(f"{stage:<9} {statistics.median(values):7.2f} {max(values):7.2f}")
    finally:
        await fabric.down(force=True)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=3, help="number of boots")
    ap.add_argument("--accel", choices=["kvm", "tcg"], default=None, help="default: what the boot probe found")
    ap.add_argument("--chromium", action="store_true", help="start Chromium in the guest desktop")
    ap.add_argument("--image", type=Path, default=None, help="image directory (default <HEARTH_DATA_DIR>/image)")
    ap.add_argument("--append", default="", help="extra kernel arguments (e.g. quiet)")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.accel, args.chromium, args.image, args.append))
