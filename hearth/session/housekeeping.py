"""The sessions' share of the controller's housekeeping pass: expiry (past the absolute lifetime, or idle with no
viewer and no heartbeat), the watchdog (a ready session whose sandbox died fails) and the warm pool's tick. Which
sessions to end is decided here; the session service (hearth/session/service.py) ends them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from hearth.config import Settings
from hearth.errors import Hop
from hearth.lifecycle.manager import SandboxManager
from hearth.observe.metrics import Metrics
from hearth.session.pool import WarmPool
from hearth.session.records import SessionRecords
from hearth.session.states import Status
from hearth.session.view import SessionView, aware


class ViewerCount(Protocol):
    """Connected viewers per session (hearth/gateway/gauge.py): a connected viewer is activity."""

    def count(self, session_id: str) -> int: ...


class NoViewers:  # a service built on its own (the doctor's, tests'): nobody watches
    def count(self, session_id: str) -> int:
        return 0


class End(Protocol):
    """The session service's end (a terminal status, the sandbox removed)."""

    async def __call__(
        self, session_id: str, status: Status, reason: str | None = None, hop: Hop | None = None
    ) -> SessionView: ...


class SessionHousekeeping:
    def __init__(
        self,
        settings: Settings,
        records: SessionRecords,
        sandboxes: SandboxManager,
        pool: WarmPool,
        metrics: Metrics,
        viewers: ViewerCount,
        end: End,
        paused: Callable[[], bool],
    ) -> None:
        """`viewers`: the gateway's gauge. `end`: the service's. `paused`: True while the pool must not be tended (the
        controller is closing, or has not adopted what the last one left yet)."""
        self.settings = settings
        self.records = records
        self.sandboxes = sandboxes
        self.pool = pool
        self.metrics = metrics
        self.viewers = viewers
        self.end = end
        self.paused = paused

    async def expire_due(self) -> int:
        """End sessions past their absolute lifetime or idle too long; returns how many. One indexed statement finds
        them (whatever the number of sessions); only those due cost more."""
        s = self.settings
        now = datetime.now(UTC)
        count = 0
        for sid, created in await self.records.due(now, s.session_ttl, s.idle_timeout):
            if now - aware(created) > timedelta(seconds=s.session_ttl):
                await self.end(sid, Status.EXPIRED, f"session lifetime of {s.session_ttl:.0f}s reached")
                count += 1
            elif not self.viewers.count(sid):  # a connected viewer is activity
                await self.end(
                    sid, Status.EXPIRED, f"idle for more than {s.idle_timeout:.0f}s (no viewer, no heartbeat)"
                )
                count += 1
        return count

    async def check_alive(self) -> int:
        """Fail ready sessions whose sandbox died; returns how many. One statement (id, status) per tick: only the
        sandboxes this controller runs are then asked."""
        failed = 0
        for sid in await self.records.past_boot():
            if sid in self.records.unrecorded or self.sandboxes.get(sid) is None:
                continue  # not (yet) adopted by this controller: the reconciler decides
            if not await self.sandboxes.alive(sid):
                await self.end(sid, Status.FAILED, "[driver] the sandbox's processes exited", Hop.DRIVER)
                failed += 1
        return failed

    async def pool_tick(self) -> None:
        """Housekeeping for the warm pool: recycle the too-old, refill to size, publish the gauge."""
        if not self.pool.enabled or self.paused():
            return
        await self.pool.recycle()
        self.pool.refill()
        for mode, row in self.pool.summary().items():
            self.metrics.pool_size.labels(mode).set(row["ready"])
