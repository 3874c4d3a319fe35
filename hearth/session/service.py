"""The session service: the session state machine and its store. Sandboxes — boot, readiness, undo, secret, keep or
destroy — belong to the sandbox manager (hearth/lifecycle); the service admits a session, asks the manager for its
sandbox and records what happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.lifecycle import readiness
from hearth.lifecycle.manager import SandboxManager
from hearth.lifecycle.sandbox import Final, Kind, SandboxState
from hearth.log import bind_session
from hearth.observe.metrics import Metrics
from hearth.providers.model import Provider
from hearth.sandbox.base import Driver, SandboxSpec
from hearth.session import admission
from hearth.session.admission import LimitExceeded
from hearth.session.bootqueue import BootQueue
from hearth.session.browser import BrowserTurns
from hearth.session.notify import Changes
from hearth.session.owner import refuse
from hearth.session.pool import WarmPool
from hearth.session.states import TERMINAL, IllegalTransition, Status, check_transition
from hearth.signin.codes import SessionCodes
from hearth.signin.modes import SigninMode, has_desktop
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, SessionRow, utcnow
from hearth.vault.keys import KeyRing, MasterKey
from hearth.webhooks.outbox import Outbox

log = logging.getLogger("hearth.session")
DRAIN_PARALLEL = 64  # sessions a drain ends at once (their teardowns mostly wait: processes exiting, the store)


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
    node_id: str = "local"  # the node whose sandbox serves it: only that node acts on it (hearth/session/owner.py)

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
            row.node_id,
        )


class SessionService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        driver: Driver,
        metrics: Metrics | None = None,
        sandboxes: SandboxManager | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._framed: set[str] = set()
        self.db = db
        self.driver = driver
        self.ipam = sandboxes.ipam if sandboxes is not None else Ipam(settings, db)
        # The one owner of every sandbox (secret, slot, undo, keep/destroy): browser sessions and CLI sandboxes.
        self.sandboxes = sandboxes or SandboxManager(settings, db, driver, self.ipam, _ring(settings))
        self.changes = Changes()
        self.outbox = Outbox(settings)  # webhooks: every state change adds its event in its own transaction
        self._boots: dict[str, asyncio.Task[None]] = {}
        self.boot_queue = BootQueue(settings.max_boots)  # admission control: boots beyond it wait (`queued`)
        # Chromium after the desktop, when its turn comes (HEARTH_BROWSER_START): hearth/session/browser.py
        self.browsers = BrowserTurns(settings, self.sandboxes, self.boot_queue, self._browser_shown)
        self.pool = WarmPool(settings, self.sandboxes, self.boot_queue, browsers=self.browsers)  # HEARTH_POOL_SIZE
        self._unrecorded: dict[str, tuple[Status, str | None, Hop | None]] = {}  # ended, but the write failed
        self._closing = False
        self.adopting = True  # until the first reconciler pass adopted the sandboxes that outlived the last controller
        self.draining = False  # set by `drain`: viewers close with 4503 "controller shutting down — reconnect"
        self.fenced: str | None = None  # set by `fence`: cut off from the cluster, viewers close with 4502 (the reason)
        self.on_terminal: list[Callable[[SessionView], Awaitable[None]]] = []
        self.on_ready: list[Callable[[SessionView], Coroutine[Any, Any, None]]] = []
        # Called (in the background) for each session whose sandbox a restarted controller adopted.
        self.on_adopted: list[Callable[[SessionView], Coroutine[Any, Any, None]]] = []
        self.on_ready.append(self.browsers.for_session)
        self.on_adopted.append(self.browsers.for_session)
        # Live sessions of this node as its own transitions left them: the viewer is admitted from here, without
        # the store (and while it is down). Ready or later, not ended; filled by `_transition` and adoption.
        self._live_views: dict[str, SessionView] = {}
        self.on_adopted.append(self._adopted_view)
        self._background: set[asyncio.Task[None]] = set()
        self.viewers = ViewerGauge()
        self._stops: dict[str, asyncio.Event] = {}
        # Set by the app when `hearth doctor` is available: walks the session's path, returns the first failure.
        self.diagnose: Callable[[str], Awaitable[HearthError | None]] | None = None
        # Set by the app (the controller's one providers dict): a sandbox's agent runs only the definition whose
        # digest its config names — that of the session's provider as it is when the sandbox boots.
        self.providers: Mapping[str, Provider] = {}
        # Sign-in codes never reach the store: every reason and event detail passes through `codes.scrub`.
        self.codes = SessionCodes(lambda: self.providers)

    # ---- naming (pure) ---------------------------------------------------------------------------
    def spec(
        self, session_id: str, slot: Slot, mode: SigninMode = SigninMode.REMOTE_BROWSER, provider: str | None = None
    ) -> SandboxSpec:
        """The sandbox of a session (built by the manager's one builder); `mode` decides whether it has a desktop.
        The agent secret is the live sandbox's, empty for one this controller does not run."""
        return self.sandboxes.spec(session_id, slot, desktop=has_desktop(mode), providers=self._digests(provider))

    def _digests(self, provider: str | None) -> tuple[str, ...]:
        known = self.providers.get(provider or "")
        digest = known.agent_digest() if known is not None else None
        return (digest,) if digest else ()

    def target(self, view: SessionView) -> readiness.Target:
        return self.sandboxes.target(self.sandbox_spec(view))

    def sandbox_spec(self, view: SessionView) -> SandboxSpec:
        """The spec of the sandbox this node runs for the session — looked up by session and node, never by a slot
        index alone: the live sandbox's own, else (not adopted yet) the slot of this node's session row."""
        sb = self.sandboxes.get(view.id)
        if sb is not None:
            return sb.spec
        if view.node_id != self.settings.node_id or view.slot is None:
            raise HearthError(
                Hop.NODE,
                f"session {view.id} has no sandbox on node {self.settings.node_id} (it lives on node {view.node_id})",
            )
        return self.spec(view.id, self.ipam.slot(view.slot), view.mode)

    def live_view(self, session_id: str) -> SessionView | None:
        """The session, when this node knows it live without the store: past its boot, not ended (nor ended while
        the store was down), its sandbox running here. None: ask the store."""
        view = self._live_views.get(session_id)
        if view is None:
            return None
        sb = self.sandboxes.get(session_id)
        if sb is None or sb.state is not SandboxState.RUNNING or session_id in self._unrecorded:
            self._live_views.pop(session_id, None)
            return None
        return view

    async def _adopted_view(self, view: SessionView) -> None:
        if not view.status.booting and not view.status.terminal:
            self._live_views[view.id] = view

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

    def fence(self, reason: str | None) -> None:
        """This node is cut off from the cluster (hearth/cluster/fence.py): close every viewer (4502 `reason`) and
        refuse new sessions and viewers until the fence is lifted (None). Nothing is ended: the store decides."""
        self.fenced = reason
        if reason is not None:
            for sid in list(self._stops):
                self._stops.pop(sid).set()  # the relays holding it stop; a viewer after the fence gets a fresh one

    def is_booting(self, session_id: str) -> bool:
        """Whether this controller is booting that session right now."""
        task = self._boots.get(session_id)
        return (task is not None and not task.done()) or self.pool.is_filling(session_id)

    def live_sessions(self) -> list[str]:
        """Sessions whose sandbox this controller runs (known without the store)."""
        return [o for o in self.sandboxes.owners() if (sb := self.sandboxes.get(o)) and sb.kind is Kind.SESSION]

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
        return self.sandboxes.secret_of(session_id)

    async def advance(
        self, session_id: str, target: Status, detail: str | None = None, also: Callable[[Db], object] | None = None
    ) -> SessionView:
        """A non-terminal step of the flow (e.g. ready → awaiting_user); illegal steps raise IllegalTransition.
        `also` runs in the same transaction, after the check: it is committed only with the step."""
        return await self._transition(session_id, target, detail, None, also=also)

    async def note(self, session_id: str, name: str, detail: str | None = None) -> None:
        """Add a timeline entry (no state change)."""
        detail = self.codes.scrub(session_id, detail)
        await self.db.run(
            lambda db: db.add(EventRow(session_id=session_id, kind="note", name=name[:64], detail=detail))
        )
        self.changes.notify(session_id)

    def first_frame(self, view: SessionView) -> None:
        """Record create→first-frame once per session (called by the gateway)."""
        if view.id in self._framed:
            return
        self._framed.add(view.id)
        self.metrics.create_to_first_frame.observe(max(0.0, time.time() - _aware(view.created_at).timestamp()))

    def counts_by_state(self) -> dict[str, int]:
        def q(db: Db) -> dict[str, int]:
            rows = db.execute(
                select(SessionRow.status, func.count())
                .where(SessionRow.node_id == self.settings.node_id)
                .group_by(SessionRow.status)
            )
            return {str(status): int(n) for status, n in rows}

        return self.db.call(q)

    def pool_usage(self) -> tuple[int, int]:
        node = self.settings.node_id
        used = self.db.call(
            lambda db: db.scalar(select(func.count()).select_from(LeaseRow).where(LeaseRow.node_id == node)) or 0
        )
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

    async def owned(self, session_id: str, what: str = "call") -> SessionView:
        """The session, when it lives on this node; NotHere (logged: 421 / close 4421) when another node owns it."""
        view = await self.get(session_id)
        here = self.settings.node_id
        if view.node_id != here:
            raise await refuse(self.db, here, session_id, view.node_id, what)
        return view

    async def list_active(self) -> list[SessionView]:
        def q(db: Db) -> list[SessionView]:
            # this node's only: a node never ends, adopts or expires another node's sessions
            rows = db.scalars(select(SessionRow).where(*self._active_here()))
            return [SessionView.of(r) for r in rows]

        return await self.db.run(q)

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        await self.owned(session_id, "events")

        def q(db: Db) -> list[dict[str, Any]]:
            rows = db.scalars(select(EventRow).where(EventRow.session_id == session_id).order_by(EventRow.id))
            return [{"at": r.at.isoformat(), "kind": r.kind, "name": r.name, "detail": r.detail} for r in rows]

        return await self.db.run(q)

    # ---- commands --------------------------------------------------------------------------------
    async def start(
        self,
        user_id: str,
        provider: str | None,
        mode: SigninMode = SigninMode.REMOTE_BROWSER,
        return_url: str | None = None,
    ) -> SessionView:
        """Create a session and boot its sandbox in the background; returns at once with status `starting`."""
        if self._closing:
            raise LimitExceeded(503, "controller is shutting down; retry on another instance")
        if self.fenced:
            raise LimitExceeded(503, f"{self.fenced}; retry on another node")
        s = self.settings
        sid = str(uuid.uuid4())

        t0 = time.monotonic()
        status = Status.STARTING if self.boot_queue.enter(sid) else Status.QUEUED
        # Limits, lease and insert in one transaction under the admission lock: concurrent starts cannot all pass.
        try:
            row, lease = await self.db.offload(
                lambda: admission.admit(
                    self.db, self.ipam, s, sid, user_id, provider, mode.value, self.driver.name, status, return_url
                )
            )
        except BaseException:
            self.boot_queue.leave(sid)
            raise
        self._boots[sid] = asyncio.create_task(
            self._boot(sid, lease.slot, mode, t0, provider, row.status == Status.QUEUED), name=f"boot-{sid}"
        )
        return SessionView.of(row)

    def readmit(self, view: SessionView) -> bool:
        """Boot a session the previous controller admitted but never began to boot (`queued` when it stopped, its
        lease held): it joins this controller's boot queue again (the reconciler calls this oldest first, so the
        line keeps its order). Returns False when it is not such a session or this controller already boots it."""
        if view.status is not Status.QUEUED or view.slot is None or self._closing or self.is_booting(view.id):
            return False
        self.boot_queue.enter(view.id)
        t0 = time.monotonic() - max(0.0, (datetime.now(UTC) - _aware(view.created_at)).total_seconds())
        self._boots[view.id] = asyncio.create_task(
            self._boot(view.id, self.ipam.slot(view.slot), view.mode, t0, view.provider, True),
            name=f"boot-{view.id}",
        )
        log.info("queued session admitted again after a controller restart", extra={"session_id": view.id})
        return True

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
            if self.sandboxes.slot_of(session_id) is None:
                raise
            await self._end_unrecorded(session_id, status, reason, hop)
            raise _unrecorded_error() from None
        if view.node_id != self.settings.node_id:  # never end (or tear down a slot of) another node's session
            raise await refuse(self.db, self.settings.node_id, session_id, view.node_id, f"end ({status.value})")
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
        await self.sandboxes.end(sid, _final(status), slot)

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
        view = await self.owned(session_id, "heartbeat")
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
        queued = False
        while True:
            waiter = self.changes.waiter(session_id)
            view = self.live_view(session_id) or await self.get(session_id)  # ready here: known without the store
            if not view.status.booting:
                return view
            if view.status is Status.QUEUED or queued:  # still in line, or its turn just came: the bound starts now
                deadline = time.monotonic() + timeout
            queued = view.status is Status.QUEUED
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return view
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), remaining)

    async def shutdown(self) -> None:
        """End every active session (the demo, `hearth serve --drain`), even while the store is down. A plain
        controller stop does not call this: sandboxes outlive the controller and the next one adopts them."""
        self._closing = True
        with contextlib.suppress(StoreError):
            await self.pool.drain()
        try:
            ids = [v.id for v in await self.list_active()]
        except StoreError:
            ids = self.live_sessions()
        gate = asyncio.Semaphore(DRAIN_PARALLEL)

        async def end_one(sid: str) -> None:
            async with gate:
                with contextlib.suppress(StoreError):
                    await self.end(sid, Status.CANCELLED, "controller shutting down")

        await asyncio.gather(*(end_one(sid) for sid in ids))  # 1,000 in seconds, not one after another
        with contextlib.suppress(StoreError):  # and what is left: kept failures, teardowns the stop interrupted
            await self.sandboxes.end_stored()

    async def stop_boots(self) -> None:
        """Cancel boots in flight (a controller stop): their sandboxes are undone; the next controller fails those
        sessions with a reason, and boots those still `queued` (`readmit`). Sandboxes that are up are left running."""
        self._closing = True
        await self.pool.drain(end=False)  # refills in flight are undone; pooled sandboxes stay for the next one
        tasks = [t for t in self._boots.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def expire_due(self) -> int:
        """End sessions past their absolute lifetime or idle too long; returns how many. One indexed statement finds
        them (whatever the number of sessions); only those due cost more."""
        s = self.settings
        now = datetime.now(UTC)
        born_before = now - timedelta(seconds=s.session_ttl)
        quiet_since = now - timedelta(seconds=s.idle_timeout)
        booting = [st.value for st in Status if st.booting]

        def due(db: Db) -> list[tuple[str, datetime]]:
            rows = db.execute(
                select(SessionRow.id, SessionRow.created_at).where(
                    *self._active_here(),
                    or_(
                        SessionRow.created_at < born_before,
                        and_(SessionRow.status.not_in(booting), SessionRow.last_seen_at < quiet_since),
                    ),
                )
            )
            return [(str(sid), created) for sid, created in rows]

        count = 0
        for sid, created in await self.db.run(due):
            if now - _aware(created) > timedelta(seconds=s.session_ttl):
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

        def ready(db: Db) -> list[str]:
            booting = [st.value for st in Status if st.booting]
            stmt = select(SessionRow.id).where(
                *self._active_here(), SessionRow.status.not_in(booting), SessionRow.slot.is_not(None)
            )
            return [str(sid) for sid in db.scalars(stmt)]

        failed = 0
        for sid in await self.db.run(ready):
            if sid in self._unrecorded or self.sandboxes.get(sid) is None:
                continue  # not (yet) adopted by this controller: the reconciler decides
            if not await self.sandboxes.alive(sid):
                await self.end(sid, Status.FAILED, "[driver] the sandbox's processes exited", Hop.DRIVER)
                failed += 1
        return failed

    def _active_here(self) -> tuple[ColumnElement[bool], ...]:
        """This node's sessions that have not ended (index ix_sessions_node_status)."""
        return (SessionRow.node_id == self.settings.node_id, SessionRow.status.not_in([t.value for t in TERMINAL]))

    # ---- internals -------------------------------------------------------------------------------
    async def _boot(
        self, sid: str, slot: Slot, mode: SigninMode, t0: float, provider: str | None = None, queued: bool = False
    ) -> None:
        timings: dict[str, float] = {}

        def mark(stage: str) -> None:
            timings[stage] = round(time.monotonic() - t0, 3)

        async def explain(exc: HearthError) -> HearthError:
            # Diagnosed while the sandbox still exists (the manager then removes it): the failure reason names the
            # first broken hop of the path, not just the gate that timed out. The gate's own words stay in the log.
            log.warning("boot failed at a gate: %s", exc.reason)
            return await self._verdict(sid) or exc

        with bind_session(sid):
            try:
                mark("lease")
                if await self._from_pool(sid, mode, provider):
                    await self.sandboxes.hand_egress(sid, await self.sandboxes.egress.url_for_session(sid))
                    if queued:
                        await self._transition(sid, Status.STARTING, None, None)
                    mark("pool")
                else:
                    if queued:
                        await self.boot_queue.turn(sid)  # a cancel while waiting: `end` releases the lease
                        await self._transition(sid, Status.STARTING, None, None)
                        mark("queued")
                    await self.sandboxes.boot(
                        sid,
                        Kind.SESSION,
                        slot,
                        desktop=has_desktop(mode),
                        providers=self._digests(provider),
                        mark=mark,
                        explain=explain,
                        egress_proxy=await self.sandboxes.egress.url_for_session(sid),  # the user's proxy port
                    )
                sb = self.sandboxes.get(sid)
                last = next(reversed(timings))
                # one transaction: the pid and timings with the move to READY, whose view is the one returned
                fields = self._fields(sid, pid=sb.pid if sb else None, timings=timings)
                ready_view = await self._transition(sid, Status.READY, None, None, timings, also=fields)
                self.metrics.create_to_ready.observe(timings[last])
                for callback in self.on_ready:
                    self.spawn(callback(ready_view), f"on-ready-{sid}")
                for stage, at in timings.items():
                    self.metrics.stage.labels(stage).observe(at)
                log.info("session ready", extra={"timings": timings})
            except asyncio.CancelledError:
                raise
            except HearthError as exc:
                log.warning("session failed: %s", exc.reason)
                await self._fail_quietly(sid, exc.reason, exc.hop, timings)
            except (IllegalTransition, SessionNotFound):
                await self.sandboxes.end(sid, Final.DONE)  # ended meanwhile (cancel/expire)
            except Exception:
                log.exception("session boot crashed")
                await self.sandboxes.end(sid, Final.FAILED)
                await self._fail_quietly(
                    sid,
                    "[driver] internal error while booting the sandbox; the controller log has the details",
                    Hop.DRIVER,
                    timings,
                )
            finally:
                self.boot_queue.leave(sid)
                self._boots.pop(sid, None)

    async def _from_pool(self, sid: str, mode: SigninMode, provider: str | None) -> bool:
        """A warm-pool sandbox handed to `sid` (its boot-queue place given up), or False on a miss / pool off."""
        if not self.pool.enabled or mode.value not in self.pool.sizes:
            return False
        sb = await self.pool.claim(sid, mode.value, self._digests(provider))
        self.metrics.pool_handouts.labels("hit" if sb is not None else "miss").inc()
        if sb is None:
            return False
        self.boot_queue.leave(sid)
        return True

    async def pool_tick(self) -> None:
        """Housekeeping for the warm pool: recycle the too-old, refill to size, publish the gauge."""
        if not self.pool.enabled or self._closing or self.adopting:
            return
        await self.pool.recycle()
        self.pool.refill()
        for mode, row in self.pool.summary().items():
            self.metrics.pool_size.labels(mode).set(row["ready"])

    async def _fail_quietly(self, sid: str, reason: str, hop: Hop, timings: dict[str, float]) -> None:
        try:
            with contextlib.suppress(IllegalTransition, SessionNotFound):
                await self._record(sid, timings=timings)
                await self._transition(sid, Status.FAILED, reason, hop)
        except StoreError:
            self._unrecorded[sid] = (Status.FAILED, reason, hop)  # recorded once the store is back

    async def _teardown(self, view: SessionView) -> None:
        await self.sandboxes.end(view.id, _final(view.status), view.slot)
        self._framed.discard(view.id)

    async def _browser_shown(self, sid: str, seconds: float) -> None:
        """The session's browser is up: `browser` (seconds from create) joins its timings."""

        def upd(db: Db) -> None:
            row = db.get(SessionRow, sid)
            if row is not None:
                row.timings = {**(row.timings or {}), "browser": round(seconds, 3)}

        with contextlib.suppress(StoreError):
            await self.db.run(upd)

    async def _record(self, sid: str, **fields: Any) -> None:
        await self.db.run(self._fields(sid, **fields))

    @staticmethod
    def _fields(sid: str, **fields: Any) -> Callable[[Db], None]:
        """Set `fields` on the session's row (within a transaction: `_record`, or `_transition`'s `also`)."""

        def upd(db: Db) -> None:
            row = db.get(SessionRow, sid)
            if row is None:
                raise SessionNotFound(sid)
            for k, v in fields.items():
                setattr(row, k, dict(v) if isinstance(v, dict) else v)

        return upd

    async def _transition(
        self,
        sid: str,
        target: Status,
        reason: str | None,
        hop: Hop | None,
        timings: dict[str, float] | None = None,
        also: Callable[[Db], object] | None = None,
    ) -> SessionView:
        reason = self.codes.scrub(sid, reason)  # reasons and event details never carry a sign-in code

        def move(db: Db) -> SessionView:
            row = db.get(SessionRow, sid, with_for_update=True)
            if row is None:
                raise SessionNotFound(sid)
            check_transition(Status(row.status), target)
            self.outbox.session(
                db,
                row,
                target.value,
                row.status,
                None if target is Status.READY else reason,
                hop.value if hop else None,
            )
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
        if view.status.booting or view.status.terminal:
            self._live_views.pop(sid, None)
        else:
            self._live_views[sid] = view
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


def _ring(settings: Settings) -> KeyRing:
    """The vault's key ring when there is one; else a ring in memory (a service built on its own — the doctor, tests
    — must not create key files: `hearth serve` refuses new keys over an existing store)."""
    path = settings.data_dir / "vault.keys"
    if settings.master_key or path.exists():
        return KeyRing.load(settings.master_key, path)
    return KeyRing([MasterKey.of(secrets.token_bytes(32))], None)


def _final(status: Status) -> Final:
    """The sandbox's end, from the session's final status: only a failed session's sandbox may be kept."""
    return Final.FAILED if status is Status.FAILED else Final.DONE


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
