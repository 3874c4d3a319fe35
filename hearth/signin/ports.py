"""What the sign-in flow sees of the sessions: small Protocols instead of the session service.
`hearth.controller.build` passes the session service and its records; nothing here imports them. The members each
Protocol lists are exactly the ones hearth/signin/flow.py uses:
- `Sessions` (the service: ends, background tasks, the agents' secrets): settings, adopting, secret_of, end, spawn.
- `Records` (the sessions' rows): get, note, advance, changes (notify).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.errors import Hop
from hearth.session.states import Status
from hearth.session.view import SessionView


class Sessions(Protocol):
    """The session service, as a sign-in ends its session and runs its delivery in the background."""

    @property
    def settings(self) -> Settings: ...
    @property
    def adopting(self) -> bool: ...
    def secret_of(self, session_id: str) -> str | None: ...
    async def end(
        self, session_id: str, status: Status, reason: str | None = None, hop: Hop | None = None
    ) -> SessionView: ...
    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...


class Changes(Protocol):
    """Wakes whoever waits on a session's change (hearth/session/notify.py)."""

    def notify(self, session_id: str) -> None: ...


class Records(Protocol):
    """The sessions' rows, as a sign-in reads them and records its steps."""

    @property
    def changes(self) -> Changes: ...
    async def get(self, session_id: str) -> SessionView: ...
    async def note(self, session_id: str, name: str, detail: str | None = None) -> None: ...
    async def advance(
        self, session_id: str, target: Status, detail: str | None = None, also: Callable[[Db], object] | None = None
    ) -> SessionView: ...
