"""The browser's turn. Chromium is the heaviest part of a boot (≈0.5 s of CPU on an idle machine, several times that
when sixty start at once; the desktop itself costs ≈0.2 s). With HEARTH_BROWSER_START=queued (the default) a
sandbox's agent starts its desktop at once and its Chromium only when asked: the controller asks when the browser's
turn comes in the boot queue at background priority — behind every desktop still waiting — and holds the turn until
the agent reports the browser's window on the desktop (hearth_agent/browser.py). In a boot storm the desktops come
up first and the browsers follow one after another; on a calm machine the turn comes at once. A page to show (the
sign-in URL) starts a waiting browser at once, whatever its turn; one nobody asked for within 180 s starts by itself
(a lost request). A warm-pool sandbox gets its browser while its refill still holds its turn. `at_boot`: Chromium
starts with the desktop (the previous behaviour).

A desktop that just became ready shows its first frame first: its browser's turn is asked for once a viewer has
that frame whole (at most FRAME_GRACE later), as the warm pool's refill waits for it (hearth/session/pool.py).

When the browser is up, the session's timings gain `browser` (seconds from create), beside `rfb` (ready).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.lifecycle.manager import SandboxManager
from hearth.session.bootqueue import BootQueue, Priority
from hearth_agent.contract import routes

if TYPE_CHECKING:
    from hearth.session.view import SessionView

log = logging.getLogger("hearth.session")

BROWSER_TIMEOUT = 30.0  # the agent answers within its own 20 s bound
FRAME_GRACE = 2.0  # seconds a ready desktop's browser waits for the session's first frame at most


class BrowserTurns:
    def __init__(
        self,
        settings: Settings,
        sandboxes: SandboxManager,
        queue: BootQueue,
        shown: Callable[[str, float], Awaitable[None]] | None = None,
        framed: Callable[[str, float], Awaitable[None]] | None = None,
    ) -> None:
        self.s, self.mgr, self.queue, self.shown, self.framed = settings, sandboxes, queue, shown, framed

    def wanted(self, owner: str) -> bool:
        sb = self.mgr.get(owner)
        return sb is not None and sb.spec.chromium and sb.spec.browser_on_request  # set from HEARTH_BROWSER_START

    async def after_first_frame(self, view: SessionView) -> None:
        """A session turned ready: its browser, once a viewer has the session's first frame whole (FRAME_GRACE at
        most) — Chromium's start took the CPU that first frame needed — when its turn comes (`for_session`). A page
        to show starts the browser at once meanwhile (the agent's). Nothing to wait for in a sign-in (`provider`: its
        page starts the browser, and its turn stays at ready as before) nor in a warm-pool hand-over (its browser is
        up already: its refill started it)."""
        if self.wanted(view.id) and self.framed is not None and view.provider is None and "pool" not in view.timings:
            await self.framed(view.id, FRAME_GRACE)
        await self.for_session(view)

    async def for_session(self, view: SessionView) -> None:
        """After a session turned ready (or was adopted): its browser when its turn comes."""
        if not self.wanted(view.id):
            return
        key = f"browser:{view.id}"
        try:
            if not self.queue.enter(key, Priority.BACKGROUND):
                await self.queue.turn(key)
            out = await self.start(view.id)
        finally:
            self.queue.leave(key)
        if out is not None and out.get("shown") is not False and self.shown is not None:
            await self.shown(view.id, time.time() - view.created_at.timestamp())

    async def start(self, owner: str) -> dict[str, Any] | None:
        """Ask `owner`'s agent to start its browser now and wait until it shows (the caller holds a turn)."""
        sb = self.mgr.get(owner)
        if sb is None or not self.wanted(owner):
            return None  # ended meanwhile, or no browser to start
        agent = sb.agent()
        t0 = time.monotonic()
        try:
            out = await agent.call("POST", routes.BROWSER, timeout=BROWSER_TIMEOUT)
        except HearthError as exc:  # the agent client converts socket errors and timeouts into these
            log.warning("browser start not confirmed: %s", exc.reason, extra={"session_id": owner})
            return None
        result: dict[str, Any] = out if isinstance(out, dict) else {}
        log.info(
            "browser started",
            extra={"session_id": owner, "seconds": round(time.monotonic() - t0, 3), "shown": result.get("shown")},
        )
        return result
