"""The session service: creates sessions, boots their sandboxes through readiness gates, tears them down.

Every multi-step create registers its undo as soon as a resource is acquired (AsyncExitStack); any failure unwinds
in reverse, so a failed or cancelled session leaves no lease, namespace, link or process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.errors import HearthError, Hop
from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.log import bind_session
from hearth.observe.metrics import Metrics
from hearth.sandbox.base import Driver, SandboxSpec
from hearth.session import readiness
from hearth.session.notify import Changes
from hearth.session.states import TERMINAL, IllegalTransition, Status, check_transition
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, SessionRow, utcnow

log = logging.getLogger("hearth.session")


class SessionNotFound(Exception):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id}")
        self.session_id = session_id


class LimitExceeded(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class SessionView:
    id: str
    user_id: str
    provider: str | None
    status: Status
    reason: str | None
    hop: str | None
    driver: str
    slot: int | None
    sandbox_ip: str | None
    timings: dict[str, float]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: SessionRow) -> SessionView:
        return cls(
            row.id,
            row.user_id,
            row.provider,
            Status(row.status),
            row.reason,
            row.hop,
            row.driver,
            row.slot,
            row.sandbox_ip,
            dict(row.timings or {}),
            row.created_at,
            row.updated_at,
        )


class SessionService:
    def __init__(self, settings: Settings, db: Database, driver: Driver, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._framed: set[str] = set()
        self.db = db
        self.driver = driver
        self.ipam = Ipam(settings, db)
        self.changes = Changes()
        self._boots: dict[str, asyncio.Task[None]] = {}
        self._secrets: dict[str, str] = {}
        self._closing = False
        self.on_terminal: list[Callable[[SessionView], Awaitable[None]]] = []
        self.on_ready: list[Callable[[SessionView], Coroutine[Any, Any, None]]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.viewers = ViewerGauge()
        self._stops: dict[str, asyncio.Event] = {}
        # Set by the app when `hearth doctor` is available: walks the session's path, returns the first failure.
        self.diagnose: Callable[[str], Awaitable[HearthError | None]] | None = None
        # Set by the app: provider name → digest of its definition. A sandbox's agent runs only the definition
        # whose digest its config names (that of the session's provider; none for sessions without one).
        self.provider_digests: dict[str, str] = {}

    # ---- naming (pure) ---------------------------------------------------------------------------
    def spec(self, session_id: str, slot: Slot, provider: str | None = None) -> SandboxSpec:
        s = self.settings
        digest = self.provider_digests.get(provider or "")
        secret = self._secrets.setdefault(session_id, secrets.token_urlsafe(32))
        return SandboxSpec(
            session_id=session_id,
            slot=slot,
            workdir=s.data_dir / "sandboxes" / slot.netns,
            secret=secret,
            screen=s.screen,
            start_url=s.start_url,
            chromium=s.chromium,
            rfb_port=s.rfb_port,
            agent_port=s.agent_port,
            providers=(digest,) if digest else (),
        )

    def target(self, view: SessionView) -> readiness.Target:
        assert view.sandbox_ip is not None
        return readiness.Target(
            self.settings.fabric_netns, view.sandbox_ip, self.settings.rfb_port, self.settings.agent_port
        )

    def stop_event(self, session_id: str) -> asyncio.Event:
        """Set when the session ends: viewers relaying it close."""
        ev = self._stops.get(session_id)
        if ev is None:
            ev = self._stops[session_id] = asyncio.Event()
        return ev

    def is_booting(self, session_id: str) -> bool:
        """Whether this controller is booting that session right now."""
        task = self._boots.get(session_id)
        return task is not None and not task.done()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task the service keeps a reference to until it finishes."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def secret_of(self, session_id: str) -> str | None:
        """The agent secret of a live sandbox of this controller (None when unknown or ended)."""
        return self._secrets.get(session_id)

    async def advance(
        self, session_id: str, target: Status, detail: str | None = None, also: Callable[[Db], object] | None = None
    ) -> SessionView:
        """A non-terminal step of the flow (e.g. ready → awaiting_user); illegal steps raise IllegalTransition.
        `also` runs in the same transaction, after the check: it is committed only with the step."""
        return await self._transition(session_id, target, detail, None, also=also)

    async def note(self, session_id: str, name: str, detail: str | None = None) -> None:
        """Add a timeline entry (no state change)."""
        await self.db.run(
            lambda db: db.add(EventRow(session_id=session_id, kind="note", name=name[:64], detail=detail))
        )
        self.changes.notify(session_id)

    def forget(self, session_id: str) -> None:
        self._secrets.pop(session_id, None)

    def first_frame(self, view: SessionView) -> None:
        """Record create→first-frame once per session (called by the gateway)."""
        if view.id in self._framed:
            return
        self._framed.add(view.id)
        self.metrics.create_to_first_frame.observe(max(0.0, time.time() - _aware(view.created_at).timestamp()))

    def counts_by_state(self) -> dict[str, int]:
        def q(db: Db) -> dict[str, int]:
            rows = db.execute(select(SessionRow.status, func.count()).group_by(SessionRow.status))
            return {str(status): int(n) for status, n in rows}

        return self.db.call(q)

    def pool_usage(self) -> tuple[int, int]:
        used = self.db.call(lambda db: db.scalar(select(func.count()).select_from(LeaseRow)) or 0)
        return int(used), self.ipam.size

    async def _verdict(self, session_id: str) -> HearthError | None:
        if self.diagnose is None:
            return None
        try:
            return await asyncio.wait_for(self.diagnose(session_id), 5)
        except Exception:
            log.exception("diagnosis failed", extra={"session_id": session_id})
            return None

    async def explain(self, session_id: str, err: HearthError) -> str:
        """A failure reason that names the first broken hop: the doctor's verdict when it finds one, else `err`."""
        if self.diagnose is not None:
            try:
                found = await asyncio.wait_for(self.diagnose(session_id), 5)
            except Exception:
                log.exception("diagnosis failed", extra={"session_id": session_id})
                found = None
            if found is not None:
                return found.reason
        return err.reason

    # ---- queries ---------------------------------------------------------------------------------
    async def get(self, session_id: str) -> SessionView:
        row = await self.db.run(lambda db: db.get(SessionRow, session_id))
        if row is None:
            raise SessionNotFound(session_id)
        return SessionView.of(row)

    async def list_active(self) -> list[SessionView]:
        def q(db: Db) -> list[SessionView]:
            rows = db.scalars(select(SessionRow).where(SessionRow.status.not_in([t.value for t in TERMINAL])))
            return [SessionView.of(r) for r in rows]

        return await self.db.run(q)

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        await self.get(session_id)

        def q(db: Db) -> list[dict[str, Any]]:
            rows = db.scalars(select(EventRow).where(EventRow.session_id == session_id).order_by(EventRow.id))
            return [{"at": r.at.isoformat(), "kind": r.kind, "name": r.name, "detail": r.detail} for r in rows]

        return await self.db.run(q)

    # ---- commands --------------------------------------------------------------------------------
    async def start(self, user_id: str, provider: str | None) -> SessionView:
        """Create a session and boot its sandbox in the background; returns at once with status `starting`."""
        if self._closing:
            raise LimitExceeded(503, "controller is shutting down; retry on another instance")
        s = self.settings
        sid = str(uuid.uuid4())
        active = [t.value for t in TERMINAL]

        def check_limits(db: Db) -> None:
            total = db.scalar(select(func.count()).select_from(SessionRow).where(SessionRow.status.not_in(active)))
            if (total or 0) >= s.max_browser_sessions:
                raise LimitExceeded(
                    503, f"all {s.max_browser_sessions} browser sessions are in use (MAX_BROWSER_SESSIONS); retry later"
                )
            mine = db.scalar(
                select(func.count())
                .select_from(SessionRow)
                .where(SessionRow.user_id == user_id, SessionRow.status.not_in(active))
            )
            if (mine or 0) >= s.max_sessions_per_user:
                raise LimitExceeded(
                    429, f"user {user_id} already has {mine} active sessions (MAX_SESSIONS_PER_USER); cancel one first"
                )

        await self.db.run(check_limits)
        t0 = time.monotonic()
        lease = await self.ipam.acquire(sid)  # PoolExhausted → 503 with nothing created

        def create(db: Db) -> SessionRow:
            row = SessionRow(
                id=sid,
                user_id=user_id,
                provider=provider,
                status=Status.STARTING.value,
                driver=self.driver.name,
                fabric=s.fabric_netns,
                slot=lease.slot.index,
                sandbox_ip=str(lease.slot.ip),
                timings={},
            )
            db.add(row)
            db.flush()
            db.add(EventRow(session_id=sid, kind="state", name=Status.STARTING.value))
            return row

        try:
            row = await self.db.run(create)
        except BaseException:
            await self.ipam.release(sid)
            raise
        self._boots[sid] = asyncio.create_task(self._boot(sid, lease.slot, t0, provider), name=f"boot-{sid}")
        return SessionView.of(row)

    async def cancel(self, session_id: str) -> SessionView:
        return await self.end(session_id, Status.CANCELLED, "cancelled by the API client")

    async def end(
        self, session_id: str, status: Status, reason: str | None = None, hop: Hop | None = None
    ) -> SessionView:
        """Move a session to a terminal status and remove its sandbox. Ending an ended session is a no-op."""
        view = await self.get(session_id)
        if view.status.terminal:
            return view
        boot = self._boots.get(session_id)
        if boot is not None and not boot.done():
            boot.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await boot
        try:
            view = await self._transition(session_id, status, reason, hop)
        except IllegalTransition:
            return await self.get(session_id)
        if status is Status.FAILED and self.settings.keep_failed:
            log.warning("keeping failed sandbox for debugging (HEARTH_KEEP_FAILED)", extra={"session_id": session_id})
        else:
            await self._teardown(view)
        return view

    async def heartbeat(self, session_id: str) -> SessionView:
        view = await self.get(session_id)
        if view.status.terminal:
            return view

        def touch(db: Db) -> None:
            row = db.get(SessionRow, session_id)
            if row is not None:
                row.last_seen_at = utcnow()

        await self.db.run(touch)
        return view

    async def wait_until(self, session_id: str, timeout: float) -> SessionView:
        """Wait (bounded) until the session is ready or has ended; returns its latest view."""
        deadline = time.monotonic() + timeout
        while True:
            waiter = self.changes.waiter(session_id)
            view = await self.get(session_id)
            if view.status is not Status.STARTING:
                return view
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return view
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)

    async def shutdown(self) -> None:
        """End every active session (used by the demo and on controller stop)."""
        self._closing = True
        for view in await self.list_active():
            await self.end(view.id, Status.CANCELLED, "controller shutting down")

    async def expire_due(self) -> int:
        """End sessions past their absolute lifetime or idle too long; returns how many."""
        s = self.settings
        now = datetime.now(UTC)
        count = 0
        for view in await self.list_active():
            row = await self.db.run(lambda db, i=view.id: db.get(SessionRow, i))  # type: ignore[misc]
            if row is None:
                continue
            created = _aware(row.created_at)
            seen = _aware(row.last_seen_at)
            if self.viewers.count(view.id):
                seen = now  # a connected viewer is activity
            if now - created > timedelta(seconds=s.session_ttl):
                await self.end(view.id, Status.EXPIRED, f"session lifetime of {s.session_ttl:.0f}s reached")
                count += 1
            elif view.status is not Status.STARTING and now - seen > timedelta(seconds=s.idle_timeout):
                await self.end(
                    view.id, Status.EXPIRED, f"idle for more than {s.idle_timeout:.0f}s (no viewer, no heartbeat)"
                )
                count += 1
        return count

    async def check_alive(self) -> int:
        """Fail ready sessions whose sandbox died; returns how many."""
        failed = 0
        for view in await self.list_active():
            if view.status is Status.STARTING or view.slot is None:
                continue
            if not await self.driver.alive(self.spec(view.id, self.ipam.slot(view.slot))):
                await self.end(view.id, Status.FAILED, "[driver] the sandbox's processes exited", Hop.DRIVER)
                failed += 1
        return failed

    # ---- internals -------------------------------------------------------------------------------
    async def _boot(self, sid: str, slot: Slot, t0: float, provider: str | None = None) -> None:
        s = self.settings
        timings: dict[str, float] = {}

        def mark(stage: str) -> None:
            timings[stage] = round(time.monotonic() - t0, 3)

        with bind_session(sid):
            try:
                async with AsyncExitStack() as undo:
                    undo.push_async_callback(self.ipam.release, sid)
                    mark("lease")
                    spec = self.spec(sid, slot, provider)
                    undo.push_async_callback(self._destroy_quietly, spec)
                    info = await self.driver.start(spec, mark)
                    await self._record(sid, pid=info.pid, timings=timings)
                    target = readiness.Target(s.fabric_netns, str(slot.ip), s.rfb_port, s.agent_port)
                    deadline = time.monotonic() + s.ready_timeout
                    try:
                        await readiness.wait_desktop(target, deadline, mark)
                    except HearthError as exc:
                        # Diagnose while the sandbox still exists (the undo stack removes it): the failure reason
                        # then names the first broken hop of the path, not just the gate that timed out.
                        raise (await self._verdict(sid) or exc) from exc
                    await self._record(sid, timings=timings)
                    await self._transition(sid, Status.READY, None, None, timings)
                    self.metrics.create_to_ready.observe(timings["rfb"])
                    ready_view = await self.get(sid)
                    for callback in self.on_ready:
                        self.spawn(callback(ready_view), f"on-ready-{sid}")
                    for stage, at in timings.items():
                        self.metrics.stage.labels(stage).observe(at)
                    log.info("session ready", extra={"timings": timings})
                    undo.pop_all()  # success: the session owns its resources now
            except asyncio.CancelledError:
                raise
            except HearthError as exc:
                log.warning("session failed: %s", exc.reason)
                await self._fail_quietly(sid, exc.reason, exc.hop, timings)
            except IllegalTransition:
                pass  # ended meanwhile (cancel/expire); the undo stack already cleaned up
            except Exception as exc:
                log.exception("session boot crashed")
                await self._fail_quietly(
                    sid, f"[driver] internal error: {type(exc).__name__}: {exc}", Hop.DRIVER, timings
                )
            finally:
                self._boots.pop(sid, None)

    async def _fail_quietly(self, sid: str, reason: str, hop: Hop, timings: dict[str, float]) -> None:
        if not self.settings.keep_failed:
            self.forget(sid)  # the sandbox is gone (undo stack): so is any use for its agent secret
        with contextlib.suppress(IllegalTransition, SessionNotFound):
            await self._record(sid, timings=timings)
            await self._transition(sid, Status.FAILED, reason, hop)

    async def _destroy_quietly(self, spec: SandboxSpec) -> None:
        if self.settings.keep_failed:
            return
        try:
            await asyncio.wait_for(self.driver.destroy(spec), 30)
        except Exception:
            log.exception("destroying sandbox failed; the reconciler will retry", extra={"session_id": spec.session_id})

    async def _teardown(self, view: SessionView) -> None:
        if view.slot is not None:
            await self._destroy_quietly(self.spec(view.id, self.ipam.slot(view.slot)))
        await self.ipam.release(view.id)
        self._secrets.pop(view.id, None)
        self._framed.discard(view.id)

    async def _record(self, sid: str, **fields: Any) -> None:
        def upd(db: Db) -> None:
            row = db.get(SessionRow, sid)
            if row is None:
                raise SessionNotFound(sid)
            for k, v in fields.items():
                setattr(row, k, dict(v) if isinstance(v, dict) else v)

        await self.db.run(upd)

    async def _transition(
        self,
        sid: str,
        target: Status,
        reason: str | None,
        hop: Hop | None,
        timings: dict[str, float] | None = None,
        also: Callable[[Db], object] | None = None,
    ) -> SessionView:
        def move(db: Db) -> SessionView:
            row = db.get(SessionRow, sid, with_for_update=True)
            if row is None:
                raise SessionNotFound(sid)
            check_transition(Status(row.status), target)
            if also is not None:
                also(db)
            row.status = target.value
            row.reason = reason
            row.hop = hop.value if hop else None
            if target is Status.READY:
                row.last_seen_at = utcnow()
            if not target.terminal:
                row.reason = None if target is Status.READY else row.reason
            for stage, at in (timings or {}).items():
                db.add(EventRow(session_id=sid, kind="stage", name=stage, detail=f"{at:.3f}s"))
            db.add(EventRow(session_id=sid, kind="state", name=target.value, detail=reason))
            return SessionView.of(row)

        view = await self.db.run(move)
        self.changes.notify(sid)
        if target is Status.FAILED:
            self.metrics.failures.labels(hop.value if hop else "unknown").inc()
        if view.status.terminal:
            self.stop_event(sid).set()
            self._stops.pop(sid, None)
            for callback in self.on_terminal:
                with contextlib.suppress(Exception):
                    await callback(view)
        return view


class ViewerGauge:
    """Connected viewers per session."""

    def __init__(self) -> None:
        self._n: dict[str, int] = {}

    def add(self, session_id: str) -> None:
        self._n[session_id] = self._n.get(session_id, 0) + 1

    def remove(self, session_id: str) -> None:
        left = self._n.get(session_id, 1) - 1
        if left > 0:
            self._n[session_id] = left
        else:
            self._n.pop(session_id, None)

    def count(self, session_id: str) -> int:
        return self._n.get(session_id, 0)

    def total(self) -> int:
        return sum(self._n.values())


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
