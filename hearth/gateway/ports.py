"""What the gateway sees of the sessions: small Protocols instead of the whole session service.

`hearth.controller.build` passes the concrete session service, records and boots; nothing here imports it. The methods each Protocol
lists are exactly the ones the gateway calls:

- `Relaying` (the session service, for the viewer WebSocket, hearth/gateway/routes.py): draining, fenced, live_view,
  wait_until, stop_event, first_frame, frame_seen.
- `Rows` (the session records): get.
- `Targets` (the session boots: where a session's desktop is, why it failed): target, warm, explain.
- `Viewers` (the viewer gauge: a connected viewer is activity): add, remove.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from hearth.errors import HearthError
from hearth.lifecycle.readiness import Target
from hearth.session.view import SessionView


class Relaying(Protocol):
    """The viewer WebSocket's view of the session service: is this node serving, which session is live here."""

    @property
    def draining(self) -> bool: ...

    @property
    def fenced(self) -> str | None: ...

    def live_view(self, session_id: str) -> SessionView | None: ...

    async def wait_until(self, session_id: str, timeout: float) -> SessionView: ...

    def stop_event(self, session_id: str) -> asyncio.Event: ...

    def first_frame(self, view: SessionView) -> None: ...

    def frame_seen(self, view: SessionView) -> None: ...


class Rows(Protocol):
    """The sessions' rows: a session this node does not know live."""

    async def get(self, session_id: str) -> SessionView: ...


class Targets(Protocol):
    """Where a session's desktop is, and why a session failed (naming the first broken hop)."""

    def target(self, view: SessionView) -> Target: ...

    def warm(self, session_id: str) -> Target | None:
        """Where a session still starting already has its desktop up (a warm-pool hand-over being personalised):
        the gateway may dial it before ready (hearth/gateway/predial.py). None for any other session."""
        ...

    async def explain(self, session_id: str, err: HearthError) -> str: ...


class Viewers(Protocol):
    """The viewer gauge: how many viewers each session has connected (a connected viewer is activity)."""

    def add(self, session_id: str) -> None: ...

    def remove(self, session_id: str) -> None: ...
