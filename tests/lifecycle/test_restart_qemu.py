"""A QEMU sandbox outlives the controller: a real controller (`hearth serve`, HEARTH_DRIVER=qemu, TCG) boots one VM
session from the golden guest image; the controller is killed with SIGKILL and a new one started on the same data dir
and store → the session is adopted (still ready, the same QEMU process alive, a viewer gets an RFB frame through the
new controller's gateway); cancelled → no QEMU process, no TAP, no workdir, no lease, no sandbox row.

Chromium is left out of the guest's desktop (HEARTH_CHROMIUM=false, as in tests/restartkit.py): under emulation it
only slows the boot; what is checked is the VM and its desktop surviving the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.fabric.fabric import Fabric
from hearth.image.build import BuiltImage
from hearth.reconcile.inventory import scan_sync
from hearth.sandbox import procs
from hearth.store.db import Database
from hearth.store.models import LeaseRow, SandboxRow
from tests.image.golden import golden_image
from tests.restartkit import Controller, Fleet, kill_leftovers, viewer_frames, wait_body
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]
BOOT_TIMEOUT = 300.0  # a TCG boot on a shared 2-core machine


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    """The golden guest image (built once, cached across runs; see tests/image/golden.py)."""
    return golden_image()


@pytest.fixture
def qemu_settings(make_settings: Callable[..., Settings], image: BuiltImage) -> Iterator[Settings]:
    settings = make_settings(HEARTH_DRIVER="qemu", HEARTH_IMAGE_DIR=str(image.path))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    yield settings
    kill_leftovers(settings)
    for pid in qemu_pids(settings):  # only after a failure: this test's own VMs
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    asyncio.run(Fabric(settings).down(force=True))


def qemu_pids(settings: Settings) -> list[int]:
    """QEMU processes of this test's own sandboxes (their command line names a workdir under this data dir)."""
    root = str(settings.data_dir / "sandboxes")
    return procs.find_pids(lambda argv: bool(argv) and "qemu" in argv[0] and any(root in a for a in argv))


def sandbox_row(db: Database, sid: str) -> tuple[int | None, int]:
    def get(d: Db) -> tuple[int | None, int]:
        row = d.get(SandboxRow, sid)
        assert row is not None, f"no sandbox row for {sid}"
        return row.pid, row.slot

    return db.call(get)


def adopted_logged(log: Path, offset: int, sid: str) -> bool:
    """The probe of an adoption: whether the controller logging to `log` (from `offset`) says it adopted `sid`'s
    sandbox (its reconciler's first pass runs in the background once it listens)."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    for line in lines:
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("msg") == "sandbox adopted" and rec.get("session_id") == sid:
                return True
    return False


async def test_a_qemu_session_is_adopted_after_sigkill_of_the_controller(
    qemu_settings: Settings, tmp_path: Path
) -> None:
    s = qemu_settings
    extra = {
        "HEARTH_DRIVER": "qemu",
        "HEARTH_IMAGE_DIR": str(s.images),
        "HEARTH_READY_TIMEOUT": str(int(BOOT_TIMEOUT)),
        "HEARTH_VIEWER_WAIT": "60",
    }
    ctl = Controller(s, tmp_path / "controller.log", 1, extra_env=extra)
    host, port = s.listen_host_port
    ws_base = f"ws://{host}:{port}"
    db = Database(s.db_url)
    try:
        await asyncio.to_thread(ctl.start, 120)
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            r = await http.post("/api/auth/start", json={"user_id": "vm"})
            assert r.status_code == 201, r.text
            sid, token = r.json()["session_id"], r.json()["viewer_token"]
            body = await wait_body(http, sid, ("ready",), timeout=BOOT_TIMEOUT + 60)
            assert body["status"] == "ready", body
        fleet = Fleet(desktops={sid: token})
        await viewer_frames(ws_base, fleet, timeout=60)
        pid, slot = sandbox_row(db, sid)
        assert pid is not None and pid in qemu_pids(s), (pid, qemu_pids(s))
        started = procs.start_time(pid)

        code = await asyncio.to_thread(ctl.stop, signal.SIGKILL)
        assert code == -signal.SIGKILL, code
        assert procs.same_process(pid, started), "the VM must outlive the controller"

        offset = ctl.log.stat().st_size  # the new controller's log lines start here
        listening = await asyncio.to_thread(ctl.start, 120)
        frames = await viewer_frames(ws_base, fleet, timeout=60)  # through the new controller's gateway
        adopted_in = time.monotonic() - listening
        async with httpx.AsyncClient(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            body = await wait_body(http, sid, ("ready",))
            assert body["status"] == "ready", body
            assert sandbox_row(db, sid) == (pid, slot), "the same sandbox, adopted"
            assert procs.same_process(pid, started), "the same QEMU process"
            assert qemu_pids(s) == [pid]
            await eventually(
                lambda: adopted_logged(ctl.log, offset, sid),
                30,
                "the new controller logging the adoption",
                interval=0.1,
            )
            print(
                f"\nqemu adopted: first frame {adopted_in:.2f}s after the new controller listened ({frames[sid]:.2f}s)"
            )

            r = await http.post(f"/api/auth/session/{sid}/cancel")
            assert r.json()["status"] == "cancelled", r.text
        assert not procs.same_process(pid, started), "cancel must stop the adopted QEMU"
        assert qemu_pids(s) == []
        inv = await asyncio.to_thread(scan_sync, s)
        assert inv.slots() == set(), inv.describe(slot)
        assert db.call(lambda d: d.query(LeaseRow).count()) == 0
        assert db.call(lambda d: d.query(SandboxRow).count()) == 0
    finally:
        ctl.kill()
        db.dispose()
