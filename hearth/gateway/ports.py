"""What the gateway sees of the sessions: small Protocols instead of the whole session service.

`hearth.controller.build` passes the concrete session service; nothing here imports it. The methods each Protocol
lists are exactly the ones the gateway calls:

- `Relaying` (the viewer WebSocket, hearth/gateway/routes.py): draining, fenced, live_view, get, wait_until, target,
  explain, stop_event, first_frame.
- `Viewers` (the viewer gauge: a connected viewer is activity): add, remove.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from hearth.errors import HearthError
from hearth.lifecycle.readiness import Target
from hearth.session.view import SessionView


class Relaying(Protocol):
    """The viewer WebSocket's view of the sessions: is this node serving, which session, where its desktop is."""

    @property
    def draining(self) -> bool: ...

    @property
    def fenced(self) -> str | None: ...

    def live_view(self, session_id: str) -> SessionView | None: ...

    async def get(self, session_id: str) -> SessionView: ...

    async def wait_until(self, session_id: str, timeout: float) -> SessionView: ...

    def target(self, view: SessionView) -> Target: ...

    async def explain(self, session_id: str, err: HearthError) -> str: ...

    def stop_event(self, session_id: str) -> asyncio.Event: ...

    def first_frame(self, view: SessionView) -> None: ...


class Viewers(Protocol):
    """The viewer gauge: how many viewers each session has connected (a connected viewer is activity)."""

    def add(self, session_id: str) -> None: ...

    def remove(self, session_id: str) -> None: ...
