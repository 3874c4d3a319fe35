"""What the viewer page sees of the sessions (hearth/api/viewer.py): a Protocol instead of the session service.

`hearth.controller.build` passes the session records and the boot queue. The members listed are exactly the ones the
page, its status stream and the code form use: settings, db, changes (waiter), get, owned, heartbeat; and the queue's
position.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from hearth.config import Settings
from hearth.session.view import SessionView
from hearth.store.db import Database


class Changes(Protocol):
    def waiter(self, session_id: str) -> asyncio.Event: ...


class Queue(Protocol):
    def position(self, sid: str) -> int | None: ...


class Watching(Protocol):
    """The viewer page's view of the sessions' rows: the session (this node's) and its changes."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def changes(self) -> Changes: ...

    async def get(self, session_id: str) -> SessionView: ...

    async def owned(self, session_id: str, what: str = "call") -> SessionView: ...

    async def heartbeat(self, session_id: str) -> SessionView: ...
