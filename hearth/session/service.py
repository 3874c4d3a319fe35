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
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.log import bind_session
from hearth.observe.metrics import Metrics
from hearth.providers.model import Provider
from hearth.sandbox.base import Driver, SandboxSpec
from hearth.session import admission, readiness
from hearth.session.admission import LimitExceeded
from hearth.session.bootqueue import BootQueue
from hearth.session.modes import SigninMode, has_desktop
from hearth.session.notify import Changes
from hearth.session.states import TERMINAL, IllegalTransition, Status, check_transition
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, SessionRow, utcnow

log = logging.getLogger("hearth.session")


class SessionNotFound(Exception):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id}")
        self.session_id = session_id


@dataclass(frozen=True)
class SessionView:
    id: str
    user_id: str
    provider: str | None
    mode: SigninMode
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
            SigninMode(row.mode),
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
        self.boot_queue = BootQueue(settings.max_boots)  # admission control: boots beyond it wait (`queued`)
        self._secrets: dict[str, str] = {}
        self._slots: dict[str, int] = {}  # slot of each session this controller runs: teardown without the store
        self._unrecorded: dict[str, tuple[Status, str | None, Hop | None]] = {}  # ended, but the write failed
        self._closing = False
        self.draining = False  # set by `drain`: viewers close with 4503 "controller shutting down — reconnect"
        self.on_terminal: list[Callable[[SessionView], Awaitable[None]]] = []
        self.on_ready: list[Callable[[SessionView], Coroutine[Any, Any, None]]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.viewers = ViewerGauge()
        self._stops: dict[str, asyncio.Event] = {}
        # Set by the app when `hearth doctor` is available: walks the session's path, returns the first failure.
        self.diagnose: Callable[[str], Awaitable[HearthError | None]] | None = None
        # Set by the app (the controller's one providers dict): a sandbox's agent runs only the definition whose
        # digest its config names — that of the session's provider as it is when the sandbox boots.
        self.providers: Mapping[str, Provider] = {}

    # ---- naming (pure) ---------------------------------------------------------------------------
    def spec(
        self, session_id: str, slot: Slot, mode: SigninMode = SigninMode.REMOTE_BROWSER, provider: str | None = None
    ) -> SandboxSpec:
        """The sandbox of a session; `mode` decides whether it has a desktop (destroying needs only the slot). The
        agent secret is the live sandbox's (made at boot), empty for one this controller does not run."""
        s = self.settings
        secret = self._secrets.get(session_id, "")
        known = self.providers.get(provider or "")
        digest = known.agent_digest() if known is not None else None
        return SandboxSpec(
            session_id=session_id,
            slot=slot,
            workdir=s.data_dir / "sandboxes" / slot.netns,
            secret=secret,
            screen=s.screen,
            start_url=s.start_url,
            chromium=s.chromium and has_desktop(mode),
            rfb_port=s.rfb_port,
            agent_port=s.agent_port,
            desktop=has_desktop(mode),
            vnc_server=s.vnc_server,
            providers=(digest,) if digest else (),
        )

    def target(self, view: SessionView) -> readiness.Target:
        assert view.slot is not None
        return readiness.Target.of(self.spec(view.id, self.ipam.slot(view.slot), view.mode), self.settings.fabric_netns)

    def stop_event(self, session_id: str) -> asyncio.Event:
        """Set when the session ends or the controller drains: viewers relaying it close."""
        ev = self._stops.get(session_id)
        if ev is None:
            ev = self._stops[session_id] = asyncio.Event()
        if self.draining:
            ev.set()
        return ev

    def drain(self) -> None:
        """Graceful shutdown begins: refuse new sessions, close every viewer (4503, reconnect)."""
        self._closing = self.draining = True
        for ev in self._stops.values():
            ev.set()

    def is_booting(self, session_id: str) -> bool:
        """Whether this controller is booting that session right now."""
        task = self._boots.get(session_id)
        return task is not None and not task.done()

    def adopt(self, session_id: str, slot: int) -> None:
        """A live sandbox found by the reconciler is run by this controller from now on."""
        self._slots[session_id] = slot

    def live_sessions(self) -> list[str]:
        """Sessions whose sandbox this controller runs (known without the store)."""
        return list(self._slots)

    def is_unrecorded(self, session_id: str) -> bool:
        """Ended while the store was down; the end is not written yet."""
        return session_id in self._unrecorded

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
    async def start(
        self, user_id: str, provider: str | None, mode: SigninMode = SigninMode.REMOTE_BROWSER
    ) -> SessionView:
        """Create a session and boot its sandbox in the background; returns at once with status `starting`."""
        if self._closing:
            raise LimitExceeded(503, "controller is shutting down; retry on another instance")
        s = self.settings
        sid = str(uuid.uuid4())

        t0 = time.monotonic()
        status = Status.STARTING if self.boot_queue.enter(sid) else Status.QUEUED
        # Limits, lease and insert in one transaction under the admission lock: concurrent starts cannot all pass.
        try:
            row, lease = await self.db.offload(
                lambda: admission.admit(
                    self.db, self.ipam, s, sid, user_id, provider, mode.value, self.driver.name, status
                )
            )
        except BaseException:
            self.boot_queue.leave(sid)
            raise
        self._slots[sid] = lease.slot.index
        self._boots[sid] = asyncio.create_task(
            self._boot(sid, lease.slot, mode, t0, provider, row.status == Status.QUEUED), name=f"boot-{sid}"
        )
        return SessionView.of(row)

    async def cancel(self, session_id: str) -> SessionView:
        return await self.end(session_id, Status.CANCELLED, "cancelled by the API client")

    async def end(
        self, session_id: str, status: Status, reason: str | None = None, hop: Hop | None = None
    ) -> SessionView:
        """Move a session to a terminal status and remove its sandbox. Ending an ended session is a no-op.

        When the store cannot take the write, the sandbox is removed all the same (this controller knows its slot),
        the end is kept in memory and recorded by `record_pending` once the store is back; StoreError is raised."""
        try:
            view = await self.get(session_id)
        except StoreError:
            if session_id not in self._slots:
                raise
            await self._end_unrecorded(session_id, status, reason, hop)
            raise _unrecorded_error() from None
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
        except StoreError:
            await self._end_unrecorded(session_id, status, reason, hop, view.slot)
            raise _unrecorded_error() from None
        if status is Status.FAILED and self.settings.keep_failed:
            log.warning("keeping failed sandbox for debugging (HEARTH_KEEP_FAILED)", extra={"session_id": session_id})
        else:
            await self._teardown(view)
        return view

    async def _end_unrecorded(
        self, sid: str, status: Status, reason: str | None, hop: Hop | None, slot: int | None = None
    ) -> None:
        """End a session while its row cannot be written: stop the boot, close its viewers, remove its sandbox."""
        log.warning("store unavailable: ending the session without recording it (yet)", extra={"session_id": sid})
        self._unrecorded[sid] = (status, reason, hop)
        boot = self._boots.get(sid)
        if boot is not None and not boot.done():
            boot.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await boot
        self.stop_event(sid).set()
        slot = slot if slot is not None else self._slots.get(sid)
        if slot is not None and not (status is Status.FAILED and self.settings.keep_failed):
            await self._destroy_quietly(self.spec(sid, self.ipam.slot(slot)))
        self._slots.pop(sid, None)
        self._secrets.pop(sid, None)

    async def record_pending(self) -> int:
        """Record ends that happened while the store was down (and release their leases); returns how many."""
        done = 0
        for sid, (status, reason, hop) in list(self._unrecorded.items()):
            try:
                with contextlib.suppress(IllegalTransition, SessionNotFound):
                    await self._transition(sid, status, reason, hop)
                await self.ipam.release(sid)
            except StoreError:
                return done  # still down: try again on the next pass
            self._unrecorded.pop(sid, None)
            done += 1
        return done

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
        """Wait (bounded) until the session is ready or has ended; returns its latest view. Time spent `queued`
        does not count: the bound starts when its boot does (every boot ahead of it has a deadline of its own)."""
        deadline = time.monotonic() + timeout
        while True:
            waiter = self.changes.waiter(session_id)
            view = await self.get(session_id)
            if not view.status.booting:
                return view
            if view.status is Status.QUEUED:
                deadline = time.monotonic() + timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return view
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)

    async def shutdown(self) -> None:
        """End every active session (used by the demo and on controller stop), even while the store is down."""
        self._closing = True
        try:
            ids = [v.id for v in await self.list_active()]
        except StoreError:
            ids = list(self._slots)
        for sid in ids:
            with contextlib.suppress(StoreError):
                await self.end(sid, Status.CANCELLED, "controller shutting down")

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
            elif not view.status.booting and now - seen > timedelta(seconds=s.idle_timeout):
                await self.end(
                    view.id, Status.EXPIRED, f"idle for more than {s.idle_timeout:.0f}s (no viewer, no heartbeat)"
                )
                count += 1
        return count

    async def check_alive(self) -> int:
        """Fail ready sessions whose sandbox died; returns how many."""
        failed = 0
        for view in await self.list_active():
            if view.status.booting or view.slot is None or view.id in self._unrecorded:
                continue
            if not await self.driver.alive(self.spec(view.id, self.ipam.slot(view.slot), view.mode)):
                await self.end(view.id, Status.FAILED, "[driver] the sandbox's processes exited", Hop.DRIVER)
                failed += 1
        return failed

    # ---- internals -------------------------------------------------------------------------------
    async def _boot(
        self, sid: str, slot: Slot, mode: SigninMode, t0: float, provider: str | None = None, queued: bool = False
    ) -> None:
        s = self.settings
        timings: dict[str, float] = {}

        def mark(stage: str) -> None:
            timings[stage] = round(time.monotonic() - t0, 3)

        with bind_session(sid):
            try:
                async with AsyncExitStack() as undo:
                    undo.push_async_callback(self._release_quietly, sid)
                    mark("lease")
                    if queued:
                        await self.boot_queue.turn(sid)  # cancelled by `end` while waiting: the undo stack runs
                        await self._transition(sid, Status.STARTING, None, None)
                        mark("queued")
                    self._secrets.setdefault(sid, secrets.token_urlsafe(32))
                    spec = self.spec(sid, slot, mode, provider)
                    undo.push_async_callback(self._destroy_quietly, spec)
                    info = await self.driver.start(spec, mark)
                    await self._record(sid, pid=info.pid, timings=timings)
                    deadline = time.monotonic() + s.ready_timeout
                    try:
                        last = await readiness.wait_ready(readiness.Target.of(spec, s.fabric_netns), deadline, mark)
                    except HearthError as exc:
                        # Diagnose while the sandbox still exists (the undo stack removes it): the failure reason
                        # then names the first broken hop of the path, not just the gate that timed out.
                        raise (await self._verdict(sid) or exc) from exc
                    await self._record(sid, timings=timings)
                    await self._transition(sid, Status.READY, None, None, timings)
                    self.metrics.create_to_ready.observe(timings[last])
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
            except Exception:
                log.exception("session boot crashed")
                await self._fail_quietly(
                    sid,
                    "[driver] internal error while booting the sandbox; the controller log has the details",
                    Hop.DRIVER,
                    timings,
                )
            finally:
                self.boot_queue.leave(sid)
                self._boots.pop(sid, None)

    async def _fail_quietly(self, sid: str, reason: str, hop: Hop, timings: dict[str, float]) -> None:
        if not self.settings.keep_failed:
            self.forget(sid)  # the sandbox is gone (undo stack): so is any use for its agent secret
        self._slots.pop(sid, None)  # the undo stack removed the sandbox
        try:
            with contextlib.suppress(IllegalTransition, SessionNotFound):
                await self._record(sid, timings=timings)
                await self._transition(sid, Status.FAILED, reason, hop)
        except StoreError:
            self._unrecorded[sid] = (Status.FAILED, reason, hop)  # recorded once the store is back

    async def _release_quietly(self, sid: str) -> None:
        try:
            await self.ipam.release(sid)
        except StoreError:
            log.warning("lease not released (store unavailable); the reconciler will", extra={"session_id": sid})

    async def _destroy_quietly(self, spec: SandboxSpec) -> None:
        if self.settings.keep_failed:
            return
        try:
            await asyncio.wait_for(self.driver.destroy(spec), 30)
        except Exception:
            log.exception("destroying sandbox failed; the reconciler will retry", extra={"session_id": spec.session_id})

    async def _teardown(self, view: SessionView) -> None:
        if view.slot is not None:
            await self._destroy_quietly(self.spec(view.id, self.ipam.slot(view.slot), view.mode))
        self._slots.pop(view.id, None)
        await self._release_quietly(view.id)
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
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, session_id: str) -> None:
        self._n[session_id] = self._n.get(session_id, 0) + 1
        self._idle.clear()

    def remove(self, session_id: str) -> None:
        left = self._n.get(session_id, 1) - 1
        if left > 0:
            self._n[session_id] = left
        else:
            self._n.pop(session_id, None)
        if not self._n:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no viewer is connected; whether that happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def count(self, session_id: str) -> int:
        return self._n.get(session_id, 0)

    def total(self) -> int:
        return sum(self._n.values())


def _unrecorded_error() -> StoreError:
    return StoreError(
        "the session ended and its sandbox was removed, but the state store cannot record it right now",
        "nothing to do: hearth records the end once the store is back (until then the session may still show as "
        "active)",
    )


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
