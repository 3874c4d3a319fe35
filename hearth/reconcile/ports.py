"""What the reconciler sees of the sessions: Protocols instead of the session service.

`hearth.controller.build` (and tests) pass the session service, its records and its boots. The members listed are
exactly the ones the reconciler uses:
- `Sessions` (the service): settings, db, ipam, metrics, sandboxes (the lifecycle manager: adopt, end, stored rows),
  pool (enabled, adopted), adopting (cleared after the first pass), live_sessions, readmit, end, stop_event,
  on_adopted and spawn.
- `Records` (the sessions' rows): is_unrecorded, list_active.
- `Boots` (the boots in flight): is_booting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from hearth.config import Settings
from hearth.errors import Hop
from hearth.fabric.ipam import Ipam
from hearth.lifecycle.manager import SandboxManager
from hearth.observe.metrics import Metrics
from hearth.session.states import Status
from hearth.session.view import SessionView
from hearth.store.db import Database


class Pool(Protocol):
    @property
    def enabled(self) -> bool: ...

    def adopted(self, owner: str) -> None: ...


class Sessions(Protocol):
    """The sessions as the reconciler adopts, readmits and fails them."""

    @property
    def adopting(self) -> bool:  # True until the first pass adopted (or removed) what outlived the last controller
        ...

    def adopted_all(self) -> None: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def ipam(self) -> Ipam: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def sandboxes(self) -> SandboxManager: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def on_adopted(self) -> Sequence[Callable[[SessionView], Coroutine[Any, Any, None]]]: ...

    def live_sessions(self) -> list[str]: ...

    def readmit(self, view: SessionView) -> bool: ...

    async def end(
        self, session_id: str, status: Status, reason: str | None = None, hop: Hop | None = None
    ) -> SessionView: ...

    def stop_event(self, session_id: str) -> asyncio.Event: ...

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...


class Records(Protocol):
    """The sessions' rows, as the reconciler reads them."""

    def is_unrecorded(self, session_id: str) -> bool: ...

    async def list_active(self) -> list[SessionView]: ...


class Boots(Protocol):
    """The boots in flight on this controller."""

    def is_booting(self, session_id: str) -> bool: ...
