"""`hearth doctor`'s read-only view of the store: a session's row, the leases and the spec its sandbox was built
from — without a session service (no boot queue, no pool, no watchdog: nothing that could act on a session)."""

from __future__ import annotations

import secrets

from hearth.config import Settings
from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.lifecycle.manager import SandboxManager
from hearth.observe.metrics import Metrics
from hearth.sandbox.base import Driver, SandboxSpec
from hearth.session.records import SessionRecords
from hearth.session.view import SessionView
from hearth.signin.modes import SigninMode, has_desktop
from hearth.store.db import Database
from hearth.vault.keys import KeyRing, MasterKey


class StoreRecords:
    """The `Records` the doctor reads (hearth/doctor/ports.py) over the controller's database."""

    def __init__(self, settings: Settings, db: Database, driver: Driver) -> None:
        self.ipam = Ipam(settings, db)
        self._rows = SessionRecords(settings, db, self.ipam, Metrics())  # only its queries are used
        # only its pure spec builder is used: this process runs no sandbox (every secret is empty) and seals nothing,
        # so its key ring is a throw-away one in memory (the doctor never reads or creates key files)
        unused = KeyRing([MasterKey.of(secrets.token_bytes(32))], None)
        self._builder = SandboxManager(settings, db, driver, self.ipam, unused)

    async def get(self, session_id: str) -> SessionView:
        return await self._rows.get(session_id)  # SessionNotFound for an unknown id

    def spec(self, session_id: str, slot: Slot, mode: SigninMode = SigninMode.REMOTE_BROWSER) -> SandboxSpec:
        return self._builder.spec(session_id, slot, desktop=has_desktop(mode))
