"""A session's boot: admitted (limits, lease and row in one transaction), queued behind HEARTH_MAX_BOOTS or handed a
warm-pool sandbox, booted by the sandbox manager (hearth/lifecycle), then ready — or failed, its reason naming the
first broken hop (`explain`: the doctor's verdict when there is one, else the gate's own words).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hearth.config import Settings
from hearth.errors import HearthError, Hop
from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.lifecycle import readiness
from hearth.lifecycle.manager import Claimed, SandboxManager
from hearth.lifecycle.sandbox import Final, Kind
from hearth.log import bind_session
from hearth.observe.metrics import Metrics
from hearth.providers.model import Provider, SigninMode
from hearth.sandbox.base import SandboxSpec
from hearth.session import admission
from hearth.session.bootqueue import BootQueue
from hearth.session.pool import WarmPool
from hearth.session.records import SessionRecords
from hearth.session.states import IllegalTransition, Status
from hearth.session.view import SessionNotFound, SessionView, aware, has_desktop
from hearth.store.models import SessionRow

log = logging.getLogger("hearth.session")
Diagnose = Callable[[str], Awaitable[HearthError | None]]  # the doctor's walk of a session's path: its first failure
ReadyHook = Callable[[SessionView], Coroutine[Any, Any, None]]
DIAGNOSE_TIMEOUT = 5.0  # seconds a failure waits for the doctor's verdict


class SessionBoots:
    def __init__(
        self,
        settings: Settings,
        records: SessionRecords,
        sandboxes: SandboxManager,
        queue: BootQueue,
        pool: WarmPool,
        driver_name: str,
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
        providers: Mapping[str, Provider],
        diagnose: Diagnose | None = None,
        on_ready: Sequence[ReadyHook] = (),
    ) -> None:
        self.settings = settings
        self.records = records
        self.sandboxes = sandboxes
        self.ipam: Ipam = sandboxes.ipam
        self.queue = queue
        self.pool = pool
        self.metrics: Metrics = records.metrics
        self._driver_name = driver_name
        self._spawn = spawn
        # The controller's one providers dict: a sandbox's agent runs only the definition whose digest its config
        # names — that of the session's provider as it is when the sandbox boots.
        self._providers = providers
        self._diagnose = diagnose
        self._on_ready = tuple(on_ready)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._handing: set[str] = set()  # sessions admitted with a warm-pool sandbox, not yet ready or failed

    # ---- naming (pure) ---------------------------------------------------------------------------
    def spec(
        self, session_id: str, slot: Slot, mode: SigninMode = SigninMode.REMOTE_BROWSER, provider: str | None = None
    ) -> SandboxSpec:
        """The sandbox of a session (built by the manager's one builder); `mode` decides whether it has a desktop.
        The agent secret is the live sandbox's, empty for one this controller does not run."""
        return self.sandboxes.spec(session_id, slot, desktop=has_desktop(mode), providers=self.digests(provider))

    def digests(self, provider: str | None) -> tuple[str, ...]:
        known = self._providers.get(provider or "")
        digest = known.agent_digest() if known is not None else None
        return (digest,) if digest else ()

    def target(self, view: SessionView) -> readiness.Target:
        return self.sandboxes.target(self.sandbox_spec(view))

    def warm(self, session_id: str) -> readiness.Target | None:
        """The target of a session being handed a warm-pool sandbox (its desktop already up, the session not ready
        yet): the gateway dials it meanwhile (hearth/gateway/predial.py). None for any other session."""
        sb = self.sandboxes.get(session_id) if session_id in self._handing else None
        return self.sandboxes.target(sb.spec) if sb is not None and sb.spec.desktop else None

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

    # ---- explain ---------------------------------------------------------------------------------
    async def verdict(self, session_id: str, err: HearthError) -> HearthError:
        """The doctor's first broken hop of the session's path when it finds one (bounded), else `err`."""
        if self._diagnose is None:
            return err
        try:
            found = await asyncio.wait_for(self._diagnose(session_id), DIAGNOSE_TIMEOUT)
        except Exception:
            log.exception("diagnosis failed", extra={"session_id": session_id})
            return err
        return found or err

    async def explain(self, session_id: str, err: HearthError) -> str:
        """A failure reason that names the first broken hop: the doctor's verdict when it finds one, else `err`."""
        return (await self.verdict(session_id, err)).reason

    # ---- boots -----------------------------------------------------------------------------------
    def is_booting(self, session_id: str) -> bool:
        """Whether this controller is booting that session right now."""
        task = self._tasks.get(session_id)
        return (task is not None and not task.done()) or self.pool.is_filling(session_id)

    async def start(self, user_id: str, provider: str | None, mode: SigninMode, return_url: str | None) -> SessionView:
        """Admit a session and boot its sandbox in the background; returns at once (`starting` or `queued`)."""
        s = self.settings
        sid = str(uuid.uuid4())
        t0 = time.monotonic()
        pooled = await self._admit_pooled(sid, user_id, provider, mode, return_url)
        if pooled is not None:  # admitted with a warm-pool sandbox: no lease, no boot queue, no second transaction
            row, handed = pooled
            self._handing.add(sid)
            self._tasks[sid] = asyncio.create_task(
                self._boot(sid, None, mode, t0, provider, handed=handed), name=f"boot-{sid}"
            )
            return SessionView.of(row)
        status = Status.STARTING if self.queue.enter(sid) else Status.QUEUED
        # Limits, lease and insert in one transaction under the admission lock: concurrent starts cannot all pass.
        db = self.records.db
        try:
            row, lease = await db.offload(
                lambda: admission.admit(
                    db, self.ipam, s, sid, user_id, provider, mode.value, self._driver_name, status, return_url
                )
            )
        except BaseException:
            self.queue.leave(sid)
            raise
        self._tasks[sid] = asyncio.create_task(
            self._boot(sid, lease.slot, mode, t0, provider, row.status == Status.QUEUED), name=f"boot-{sid}"
        )
        return SessionView.of(row)

    async def _admit_pooled(
        self, sid: str, user_id: str, provider: str | None, mode: SigninMode, return_url: str | None
    ) -> tuple[SessionRow, Claimed | HearthError] | None:
        """Admit `sid` and claim a warm-pool sandbox for it in the same transaction (hearth/session/admission.py
        `admit_pooled`), when the pool holds one for `mode`: the row and the sandbox handed over (or why it could
        not be, for the boot to fail the session with). None: no pooled sandbox (the ordinary admission follows)."""
        pool = self.pool
        if not pool.enabled or mode.value not in pool.sizes:
            return None
        db, s, providers = self.records.db, self.settings, self.digests(provider)
        async with pool.claiming:
            candidates = pool.candidates(mode.value)
            if not candidates:
                return None  # a miss: counted where the ordinary boot asks the pool (`_from_pool`)
            secret = secrets.token_urlsafe(32)
            sealed = self.sandboxes.rows.seal(sid, secret)
            got = await db.offload(
                lambda: admission.admit_pooled(
                    db, s, sid, user_id, provider, mode.value, self._driver_name, candidates, sealed, return_url
                )
            )
            if got is None:
                return None
            row, owner = got
            try:
                return row, pool.taken(owner, sid, secret, providers)
            except HearthError as exc:
                return row, exc

    def readmit(self, view: SessionView) -> bool:
        """Boot a session the previous controller admitted but never began to boot (`queued` when it stopped, its
        lease held): it joins this controller's boot queue again (the reconciler calls this oldest first, so the
        line keeps its order). Returns False when it is not such a session or this controller already boots it."""
        if view.status is not Status.QUEUED or view.slot is None or self.is_booting(view.id):
            return False
        self.queue.enter(view.id)
        t0 = time.monotonic() - max(0.0, (datetime.now(UTC) - aware(view.created_at)).total_seconds())
        self._tasks[view.id] = asyncio.create_task(
            self._boot(view.id, self.ipam.slot(view.slot), view.mode, t0, view.provider, True),
            name=f"boot-{view.id}",
        )
        log.info("queued session admitted again after a controller restart", extra={"session_id": view.id})
        return True

    async def cancel(self, session_id: str) -> None:
        """Stop the session's boot if one is in flight (its sandbox is undone) and wait for it."""
        boot = self._tasks.get(session_id)
        if boot is not None and not boot.done():
            boot.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await boot

    async def cancel_all(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _boot(
        self,
        sid: str,
        slot: Slot | None,
        mode: SigninMode,
        t0: float,
        provider: str | None = None,
        queued: bool = False,
        handed: Claimed | HearthError | None = None,
    ) -> None:
        """Boot `sid` on `slot`; or, `handed`, personalise the warm-pool sandbox its admission claimed."""
        timings: dict[str, float] = {}
        records = self.records
        viewed = False

        def mark(stage: str) -> None:
            timings[stage] = round(time.monotonic() - t0, 3)

        async def explain(exc: HearthError) -> HearthError:
            # Diagnosed while the sandbox still exists (the manager then removes it): the failure reason names the
            # first broken hop of the path, not just the gate that timed out. The gate's own words stay in the log.
            log.warning("boot failed at a gate: %s", exc.reason)
            return await self.verdict(sid, exc)

        with bind_session(sid):
            try:
                mark("lease")
                if handed is not None:
                    await self._personalise(sid, mode, provider, handed)
                    await self.sandboxes.hand_egress(sid, await self.sandboxes.egress.url_for_session(sid))
                    mark("pool")
                elif await self._from_pool(sid, mode, provider):
                    await self.sandboxes.hand_egress(sid, await self.sandboxes.egress.url_for_session(sid))
                    if queued:
                        await records.transition(sid, Status.STARTING, None, None)
                    mark("pool")
                else:
                    assert slot is not None  # only a hand-over is admitted without a lease
                    if queued:
                        await self.queue.turn(sid)  # a cancel while waiting: `end` releases the lease
                        await records.transition(sid, Status.STARTING, None, None)
                        mark("queued")
                    await self.sandboxes.boot(
                        sid,
                        Kind.SESSION,
                        slot,
                        desktop=has_desktop(mode),
                        providers=self.digests(provider),
                        mark=mark,
                        explain=explain,
                        egress_proxy=await self.sandboxes.egress.url_for_session(sid),  # the user's proxy port
                    )
                sb = self.sandboxes.get(sid)
                last = next(reversed(timings))
                # one transaction: the pid and timings with the move to READY, whose view is the one returned
                fields = records.fields(sid, pid=sb.pid if sb else None, timings=timings)
                ready_view = await records.transition(sid, Status.READY, None, None, timings, also=fields)
                viewed = has_desktop(mode)  # ready: its first viewer comes next
                self.metrics.create_to_ready.observe(timings[last])
                for callback in self._on_ready:
                    self._spawn(callback(ready_view), f"on-ready-{sid}")
                for stage, at in timings.items():
                    self.metrics.stage.labels(stage).observe(at)
                log.info("session ready", extra={"timings": timings})
            except asyncio.CancelledError:
                raise
            except HearthError as exc:
                log.warning("session failed: %s", exc.reason)
                await records.fail_quietly(sid, exc.reason, exc.hop, timings)
            except (IllegalTransition, SessionNotFound):
                await self.sandboxes.end(sid, Final.DONE)  # ended meanwhile (cancel/expire)
            except Exception:
                log.exception("session boot crashed")
                await self.sandboxes.end(sid, Final.FAILED)
                await records.fail_quietly(
                    sid,
                    "[driver] internal error while booting the sandbox; the controller log has the details",
                    Hop.DRIVER,
                    timings,
                )
            finally:
                self.queue.leave(sid)
                self._tasks.pop(sid, None)
                if handed is not None:  # the hand-over is over (ready or not): its replacement boots
                    self.pool.handed_over(sid, viewed)
                self._handing.discard(sid)

    async def _personalise(
        self, sid: str, mode: SigninMode, provider: str | None, handed: Claimed | HearthError
    ) -> None:
        """The hand-over its admission made: the sandbox's agent takes the session's identity (HearthError if not)."""
        self.metrics.pool_handouts.labels("hit").inc()
        if isinstance(handed, HearthError):
            raise handed
        await self.pool.personalise(handed, sid, mode.value, self.digests(provider))

    async def _from_pool(self, sid: str, mode: SigninMode, provider: str | None) -> bool:
        """A warm-pool sandbox handed to `sid` (its boot-queue place given up), or False on a miss / pool off."""
        if not self.pool.enabled or mode.value not in self.pool.sizes:
            return False
        sb = await self.pool.claim(sid, mode.value, self.digests(provider))
        self.metrics.pool_handouts.labels("hit" if sb is not None else "miss").inc()
        if sb is None:
            return False
        self.queue.leave(sid)
        return True
