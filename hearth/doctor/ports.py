"""What the doctor sees of the controller: small Protocols instead of the session service.

`hearth.controller.build` passes the concrete objects (the session service, its warm pool, the sandboxes' egress
gate); `hearth doctor` on the command line passes `StoreRecords` (hearth/doctor/records.py), which only reads the
store. The methods listed are exactly the ones the checks call:

- `Records` (resolve a session, the lease and pool checks): get, spec, ipam (leases, size, slot, index_of).
- `PoolGauge` (the pool advisory): enabled, hits, misses, summary.
"""

from __future__ import annotations

from typing import Protocol

from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.sandbox.base import SandboxSpec
from hearth.session.view import SessionView
from hearth.signin.modes import SigninMode


class Records(Protocol):
    """The sessions' rows: which session, on which slot."""

    @property
    def ipam(self) -> Ipam: ...

    async def get(self, session_id: str) -> SessionView: ...


class Specs(Protocol):
    """The one spec builder: the sandbox a session runs in."""

    def spec(self, session_id: str, slot: Slot, mode: SigninMode = ...) -> SandboxSpec: ...


class PoolGauge(Protocol):
    """The warm pool, as the pool advisory reports it."""

    @property
    def enabled(self) -> bool: ...

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...

    def summary(self) -> dict[str, dict[str, int]]: ...
