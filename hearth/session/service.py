"""The session service: it ends sessions (also while the store is down), drains and fences, and holds the stop
events viewers wait on. It makes the records (hearth/session/records.py: transitions, store, queries), the boots
(hearth/session/boots.py: start, queue, pool claim, boot, specs, explain) and the housekeeping
(hearth/session/housekeeping.py: expiry, watchdog, warm pool), which their callers are handed directly
(`service.records`, `service.boots`, `service.housekeeping`: no call is forwarded here); sandboxes belong to the
sandbox manager (hearth/lifecycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from hearth.config import Settings
from hearth.errors import Hop, StoreError
from hearth.lifecycle.manager import SandboxManager
from hearth.lifecycle.sandbox import Final, Kind, SandboxState
from hearth.observe.metrics import Metrics
from hearth.providers.model import Provider, SigninMode
from hearth.sandbox.base import Driver
from hearth.session.admission import Limit, LimitExceeded
from hearth.session.bootqueue import BootQueue
from hearth.session.boots import Diagnose, ReadyHook, SessionBoots
from hearth.session.browser import BrowserTurns
from hearth.session.housekeeping import NoViewers, SessionHousekeeping, ViewerCount
from hearth.session.owner import refuse
from hearth.session.pool import WarmPool
from hearth.session.records import Hook, Scrub, SessionRecords
from hearth.session.states import IllegalTransition, Status
from hearth.session.view import SessionNotFound as SessionNotFound
from hearth.session.view import SessionView as SessionView
from hearth.session.view import aware
from hearth.store.db import Database

log = logging.getLogger("hearth.session")
# sandboxes a drain tears down at once: their teardowns mostly wait (processes exiting), and those waiting together
# share each batch (row deletes, lease releases, egress revokes, port removals). A drain of 300 direct sandboxes here
# (bench/direct_ramp.py, same tree): 4.3 and 4.3 s at 64; 3.2, 3.3 and 4.1 s at 128; 3.6 s at 256
DRAIN_PARALLEL = 128
DRAIN_BATCH = 200  # sessions a drain moves to `cancelled` per transaction
DRAIN_REASON = "controller shutting down"


class SessionService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        driver: Driver,
        sandboxes: SandboxManager,
        *,
        metrics: Metrics | None = None,
        providers: Mapping[str, Provider] | None = None,
        viewers: ViewerCount | None = None,
        codes: Scrub | None = None,
        diagnose: Diagnose | None = None,
        cli_digests: Callable[[], tuple[str, ...]] = tuple,
        on_ready: Sequence[ReadyHook] = (),
        on_adopted: Sequence[ReadyHook] = (),
        on_terminal: Sequence[Hook] = (),
    ) -> None:
        """`sandboxes`: the one owner of every sandbox (its key ring seals their secrets). `providers`: the
        controller's one providers dict. `viewers`: the gateway's gauge. `codes`: the sign-in codes no reason or event
        detail may carry (hearth/signin/codes.py; else only what is shaped like a code is scrubbed). `diagnose`: the
        doctor's walk of a session's path (failure reasons name the first broken hop). `cli_digests`: the prompt
        definitions a pooled CLI sandbox may run. The hooks run after a session turned ready, after a restarted controller adopted it (both in the
        background), and after it ended (awaited, in order)."""
        self.settings = settings
        self.db = db
        self.driver = driver
        self.sandboxes = sandboxes
        self.ipam = sandboxes.ipam
        self.metrics = metrics or Metrics()
        self.records = SessionRecords(
            settings, db, self.ipam, self.metrics, codes, on_terminal=(self._stopped, *on_terminal)
        )
        self.boot_queue = BootQueue(settings.max_boots)  # admission control: boots beyond it wait (`queued`)
        # Chromium after the desktop, when its turn comes (HEARTH_BROWSER_START): hearth/session/browser.py
        self.browsers = BrowserTurns(settings, sandboxes, self.boot_queue, self.records.browser_shown, self.framed)
        self.pool = WarmPool(  # HEARTH_POOL_SIZE
            settings, sandboxes, self.boot_queue, browsers=self.browsers, cli_digests=cli_digests
        )
        self.boots = SessionBoots(
            settings,
            self.records,
            sandboxes,
            self.boot_queue,
            self.pool,
            driver.name,
            self.spawn,
            providers or {},
            diagnose,
            on_ready=(self.browsers.after_first_frame, *on_ready),
        )
        # expiry, the watchdog and the warm pool's tick, each housekeeping pass (hearth/session/housekeeping.py)
        self.housekeeping = SessionHousekeeping(
            settings,
            self.records,
            sandboxes,
            self.pool,
            self.metrics,
            viewers or NoViewers(),
            self.end,
            lambda: self._closing or self.adopting,
        )
        # Called (in the background) for each session whose sandbox a restarted controller adopted.
        self.on_adopted: tuple[ReadyHook, ...] = (self.browsers.for_session, self._adopted_view, *on_adopted)
        self._closing = False
        self.adopting = True  # until the first reconciler pass adopted the sandboxes that outlived the last controller
        self.draining = False  # set by `drain`: viewers close with 4503 "controller shutting down — reconnect"
        self.fenced: str | None = None  # set by `fence`: cut off from the cluster, viewers close with 4502 (the reason)
        self._first_frames: set[str] = set()  # live sessions whose first frame began to reach a viewer (the metric)
        self._framed: dict[str, asyncio.Event] = {}  # live session → set once a viewer has its first frame whole
        self._background: set[asyncio.Task[None]] = set()
        self._stops: dict[str, asyncio.Event] = {}

    async def start(
        self,
        user_id: str,
        provider: str | None,
        mode: SigninMode = SigninMode.REMOTE_BROWSER,
        return_url: str | None = None,
    ) -> SessionView:
        """Create a session and boot its sandbox in the background; returns at once with status `starting`."""
        if self._closing:
            raise LimitExceeded(Limit.CLOSED, "controller is shutting down; retry on another instance")
        if self.fenced:
            raise LimitExceeded(Limit.CLOSED, f"{self.fenced}; retry on another node")
        return await self.boots.start(user_id, provider, mode, return_url)

    def readmit(self, view: SessionView) -> bool:
        """A `queued` session of the previous controller boots in its turn (the reconciler, oldest first)."""
        return not self._closing and self.boots.readmit(view)

    # ---- live state (known without the store) -----------------------------------------------------
    def live_view(self, session_id: str) -> SessionView | None:
        """The session, when this node knows it live without the store: past its boot, not ended (nor ended while
        the store was down), its sandbox running here. None: ask the store."""
        view = self.records.live.get(session_id)
        if view is None:
            return None
        sb = self.sandboxes.get(session_id)
        if sb is None or sb.state is not SandboxState.RUNNING or session_id in self.records.unrecorded:
            self.records.live.pop(session_id, None)
            return None
        return view

    async def _adopted_view(self, view: SessionView) -> None:
        if not view.status.booting and not view.status.terminal:
            self.records.live[view.id] = view

    def live_sessions(self) -> list[str]:
        """Sessions whose sandbox this controller runs (known without the store)."""
        return [o for o in self.sandboxes.owners() if (sb := self.sandboxes.get(o)) and sb.kind is Kind.SESSION]

    def secret_of(self, session_id: str) -> str | None:
        """The agent secret of a live sandbox of this controller (None when unknown or ended)."""
        return self.sandboxes.secret_of(session_id)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task the service keeps a reference to until it finishes."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def first_frame(self, view: SessionView) -> None:
        """Record create→first-frame once per session (called by the gateway)."""
        if view.id in self._first_frames:
            return
        self._first_frames.add(view.id)
        self.metrics.create_to_first_frame.observe(max(0.0, time.time() - aware(view.created_at).timestamp()))

    def frame_seen(self, view: SessionView) -> None:
        """The session's first viewer has its first frame whole (called by the gateway): what waited for it — a
        hand-over's refill, a new desktop's browser — goes ahead."""
        framed = self._framed.setdefault(view.id, asyncio.Event())
        if not framed.is_set():
            framed.set()
            self.pool.framed(view.id)

    async def framed(self, session_id: str, timeout: float) -> None:
        """Until a viewer of the session has its first frame whole (`frame_seen`), `timeout` at most (at once for a
        session whose sandbox is not running here: no frame will come)."""
        if self.sandboxes.get(session_id) is None:
            return
        framed = self._framed.setdefault(session_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(framed.wait(), timeout)

    # ---- stop events, drain and fence --------------------------------------------------------------
    def stop_event(self, session_id: str) -> asyncio.Event:
        """Set when the session ends or the controller drains: viewers relaying it close."""
        ev = self._stops.get(session_id)
        if ev is None:
            ev = self._stops[session_id] = asyncio.Event()
        if self.draining:
            ev.set()
        return ev

    async def _stopped(self, view: SessionView) -> None:
        """The session ended: viewers relaying it close."""
        self.stop_event(view.id).set()
        self._stops.pop(view.id, None)

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

    # ---- ends ------------------------------------------------------------------------------------
    async def cancel(self, session_id: str) -> SessionView:
        return await self.end(session_id, Status.CANCELLED, "cancelled by the API client")

    def adopted_all(self) -> None:
        """The reconciler's first pass adopted (or removed) every sandbox that outlived the last controller."""
        self.adopting = False

    async def end(
        self, session_id: str, status: Status, reason: str | None = None, hop: Hop | None = None
    ) -> SessionView:
        """Move a session to a terminal status and remove its sandbox. Ending an ended session is a no-op.

        When the store cannot take the write, the sandbox is removed all the same (this controller knows its slot),
        the end is kept in memory and recorded by `record_pending` once the store is back; StoreError is raised."""
        try:
            view = await self.records.get(session_id)
        except StoreError:
            if self.sandboxes.slot_of(session_id) is None:
                raise
            await self._end_unrecorded(session_id, status, reason, hop)
            raise _unrecorded_error() from None
        if view.node_id != self.settings.node_id:  # never end (or tear down a slot of) another node's session
            raise await refuse(self.db, self.settings.node_id, session_id, view.node_id, f"end ({status.value})")
        if view.status.terminal:
            return view
        await self.boots.cancel(session_id)
        try:
            view = await self.records.transition(session_id, status, reason, hop)
        except IllegalTransition:
            return await self.records.get(session_id)
        except StoreError:
            await self._end_unrecorded(session_id, status, reason, hop, view.slot)
            raise _unrecorded_error() from None
        await self.sandboxes.end(view.id, _final(view.status), view.slot)
        self._framed.pop(view.id, None)
        self._first_frames.discard(view.id)
        return view

    async def _end_unrecorded(
        self, sid: str, status: Status, reason: str | None, hop: Hop | None, slot: int | None = None
    ) -> None:
        """End a session while its row cannot be written: stop the boot, close its viewers, remove its sandbox."""
        log.warning("store unavailable: ending the session without recording it (yet)", extra={"session_id": sid})
        self.records.unrecorded[sid] = (status, reason, hop)
        await self.boots.cancel(sid)
        self.stop_event(sid).set()
        await self.sandboxes.end(sid, _final(status), slot)

    async def wait_until(self, session_id: str, timeout: float) -> SessionView:
        """Wait (bounded) until the session is ready or has ended; returns its latest view. Time spent `queued`
        does not count: the bound starts when its boot does (every boot ahead of it has a deadline of its own)."""
        deadline = time.monotonic() + timeout
        queued = False
        while True:
            waiter = self.records.changes.waiter(session_id)
            view = self.live_view(session_id) or await self.records.get(session_id)  # ready here: without the store
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
        controller stop does not call this: sandboxes outlive the controller and the next one adopts them.

        Group commits (1,000 sessions in seconds): the sessions move to `cancelled` DRAIN_BATCH at a time, one
        transaction each (`records.end_many`: the same events, webhooks and notifications as one by one); their
        sandboxes are torn down DRAIN_PARALLEL at once, whose row deletes and lease releases arriving together are
        one transaction each (hearth/store/coalesce.py). When the store cannot take a batch, its sessions take the
        one-by-one path (`end`), which ends them unrecorded and records them once the store is back."""
        self._closing = True
        with contextlib.suppress(StoreError):
            await self.pool.drain()
        gate = asyncio.Semaphore(DRAIN_PARALLEL)

        async def end_one(sid: str) -> None:
            async with gate:
                with contextlib.suppress(StoreError):
                    await self.end(sid, Status.CANCELLED, DRAIN_REASON)

        try:
            views = await self.records.list_active()
        except StoreError:
            await asyncio.gather(*(end_one(sid) for sid in self.live_sessions()))
            views = []

        async def cancel_boot(sid: str) -> None:
            async with gate:
                await self.boots.cancel(sid)  # as `end` does first: a boot in flight is undone

        async def teardown(view: SessionView) -> None:
            async with gate:
                await self.sandboxes.end(view.id, _final(view.status), view.slot)
                self._framed.pop(view.id, None)
                self._first_frames.discard(view.id)

        await asyncio.gather(*(cancel_boot(v.id) for v in views if v.status.booting))
        teardowns: list[asyncio.Task[None]] = []
        try:
            for at in range(0, len(views), DRAIN_BATCH):
                batch = [v.id for v in views[at : at + DRAIN_BATCH]]
                try:
                    ended = await self.records.end_many(batch, Status.CANCELLED, DRAIN_REASON)
                except StoreError:
                    teardowns += [asyncio.create_task(end_one(sid)) for sid in batch]
                    continue
                teardowns += [asyncio.create_task(teardown(view)) for view in ended]  # while the next batch commits
            await asyncio.gather(*teardowns)
        except BaseException:  # the drain itself was cancelled: so are its teardowns (each sandbox's close finishes)
            for task in teardowns:
                task.cancel()
            raise
        with contextlib.suppress(StoreError):  # and what is left: kept failures, teardowns the stop interrupted
            await self.sandboxes.end_stored()

    async def stop_boots(self) -> None:
        """Cancel boots in flight (a controller stop): their sandboxes are undone; the next controller fails those
        sessions with a reason, and boots those still `queued` (`readmit`). Sandboxes that are up are left running."""
        self._closing = True
        await self.pool.drain(end=False)  # refills in flight are undone; pooled sandboxes stay for the next one
        await self.boots.cancel_all()


def _unrecorded_error() -> StoreError:
    return StoreError(
        "the session ended and its sandbox was removed, but the state store cannot record it right now",
        "nothing to do: hearth records the end once the store is back (until then the session may still show as "
        "active)",
    )


def _final(status: Status) -> Final:
    """The sandbox's end, from the session's final status: only a failed session's sandbox may be kept."""
    return Final.FAILED if status is Status.FAILED else Final.DONE
