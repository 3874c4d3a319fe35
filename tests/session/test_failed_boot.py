"""A session whose boot fails leaves no per-session state in the service (no root: a driver that always fails)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hearth.config import load_settings
from hearth.errors import DriverError, Hop
from hearth.sandbox.base import Driver, SandboxInfo, SandboxSpec, StageMark
from hearth.session.states import Status
from hearth.store.db import Database
from tests.session.servicekit import session_service


class FailingDriver(Driver):
    name = "failing"

    def __init__(self) -> None:
        self.destroyed: list[str] = []

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        raise DriverError(Hop.DRIVER, "cannot start (test driver)", "none")

    async def destroy(self, spec: SandboxSpec) -> None:
        self.destroyed.append(spec.session_id)

    async def alive(self, spec: SandboxSpec) -> bool:
        return False


async def test_failed_boots_forget_their_secrets(tmp_path: Path) -> None:
    settings = load_settings({"HEARTH_DATA_DIR": str(tmp_path)}, env_file=None)
    driver = FailingDriver()
    svc = session_service(settings, Database(settings.db_url), driver)
    ids = []
    for i in range(5):
        view = await svc.start(f"user{i}", None)
        ids.append(view.id)
        for _ in range(500):
            if not svc.boots.is_booting(view.id):
                break
            await asyncio.sleep(0.01)
    assert [(await svc.records.get(i)).status for i in ids] == [Status.FAILED] * 5
    assert sorted(driver.destroyed) == sorted(ids)  # the undo stack ran
    assert await svc.ipam.leases() == []
    kept = [i for i in ids if svc.secret_of(i) is not None]
    print(f"\nfailed sessions whose agent secret is still held: {len(kept)} of {len(ids)}")
    assert kept == []
