"""The session records: the state machine's transitions and every write and query of a session's row and timeline.

Each transition is one transaction (checked against hearth/session/states.py, with its webhook event and timeline
entries); its reason and every event detail pass through the sign-in codes' scrub first (`Scrub`: the sign-in's
SessionCodes, hearth/signin/codes.py, in a controller). Ends
the store could not take are kept here (`unrecorded`) until `record_pending` writes them. Sessions past their boot and
not ended are also kept as their last transition left them (`live`): the viewer is admitted without the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.errors import Hop, StoreError
from hearth.fabric.ipam import Ipam
from hearth.observe.metrics import Metrics
from hearth.session.notify import Changes
from hearth.session.owner import refuse
from hearth.session.states import TERMINAL, IllegalTransition, Status, check_transition
from hearth.session.view import SessionNotFound, SessionView
from hearth.store.db import Database
from hearth.store.models import EventRow, LeaseRow, SessionRow, utcnow
from hearth.webhooks.outbox import Outbox
from hearth_agent.codes import scrub_codes

Hook = Callable[[SessionView], Awaitable[None]]


class Scrub(Protocol):
    def scrub(self, session_id: str, text: str | None) -> str | None:
        """`text` without any sign-in code (None stays None)."""


class _Shapes:
    """Without the sign-in's codes: only what is shaped like a device code is scrubbed."""

    def scrub(self, session_id: str, text: str | None) -> str | None:
        return scrub_codes(text) if text else text


class SessionRecords:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        ipam: Ipam,
        metrics: Metrics,
        codes: Scrub | None = None,
        on_terminal: Sequence[Hook] = (),
    ) -> None:
        self.settings = settings
        self.db = db
        self.ipam = ipam
        self.metrics = metrics
        self.changes = Changes()
        self.outbox = Outbox(settings)  # webhooks: every state change adds its event in its own transaction
        # Sign-in codes never reach the store: every reason and event detail passes through `codes.scrub`.
        self.codes: Scrub = codes or _Shapes()
        self.on_terminal = tuple(on_terminal)  # called in order after a session's move to a terminal status
        self.unrecorded: dict[str, tuple[Status, str | None, Hop | None]] = {}  # ended, but the write failed
        # Live sessions of this node as its own transitions left them: the viewer is admitted from here, without
        # the store (and while it is down). Ready or later, not ended; filled by `transition` and adoption.
        self.live: dict[str, SessionView] = {}

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
            rows = db.scalars(select(SessionRow).where(*self.active_here()))
            return [SessionView.of(r) for r in rows]

        return await self.db.run(q)

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        await self.owned(session_id, "events")

        def q(db: Db) -> list[dict[str, Any]]:
            rows = db.scalars(select(EventRow).where(EventRow.session_id == session_id).order_by(EventRow.id))
            return [{"at": r.at.isoformat(), "kind": r.kind, "name": r.name, "detail": r.detail} for r in rows]

        return await self.db.run(q)

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

    async def due(self, now: datetime, ttl: float, idle: float) -> list[tuple[str, datetime]]:
        """This node's active sessions born `ttl` seconds before `now`, or past their boot and not seen for `idle`
        seconds: (id, created_at) — one indexed statement, whatever the number of sessions."""
        born_before, quiet_since = now - timedelta(seconds=ttl), now - timedelta(seconds=idle)
        booting = [st.value for st in Status if st.booting]

        def q(db: Db) -> list[tuple[str, datetime]]:
            rows = db.execute(
                select(SessionRow.id, SessionRow.created_at).where(
                    *self.active_here(),
                    or_(
                        SessionRow.created_at < born_before,
                        and_(SessionRow.status.not_in(booting), SessionRow.last_seen_at < quiet_since),
                    ),
                )
            )
            return [(str(sid), created) for sid, created in rows]

        return await self.db.run(q)

    async def past_boot(self) -> list[str]:
        """This node's active sessions past their boot that hold a slot (one statement)."""

        def q(db: Db) -> list[str]:
            booting = [st.value for st in Status if st.booting]
            stmt = select(SessionRow.id).where(
                *self.active_here(), SessionRow.status.not_in(booting), SessionRow.slot.is_not(None)
            )
            return [str(sid) for sid in db.scalars(stmt)]

        return await self.db.run(q)

    def active_here(self) -> tuple[ColumnElement[bool], ...]:
        """This node's sessions that have not ended (index ix_sessions_node_status)."""
        return (SessionRow.node_id == self.settings.node_id, SessionRow.status.not_in([t.value for t in TERMINAL]))

    # ---- writes ----------------------------------------------------------------------------------
    async def advance(
        self, session_id: str, target: Status, detail: str | None = None, also: Callable[[Db], object] | None = None
    ) -> SessionView:
        """A non-terminal step of the flow (e.g. ready → awaiting_user); illegal steps raise IllegalTransition.
        `also` runs in the same transaction, after the check: it is committed only with the step."""
        return await self.transition(session_id, target, detail, None, also=also)

    async def note(self, session_id: str, name: str, detail: str | None = None) -> None:
        """Add a timeline entry (no state change)."""
        detail = self.codes.scrub(session_id, detail)
        await self.db.run(
            lambda db: db.add(EventRow(session_id=session_id, kind="note", name=name[:64], detail=detail))
        )
        self.changes.notify(session_id)

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

    async def browser_shown(self, sid: str, seconds: float) -> None:
        """The session's browser is up: `browser` (seconds from create) joins its timings."""

        def upd(db: Db) -> None:
            row = db.get(SessionRow, sid)
            if row is not None:
                row.timings = {**(row.timings or {}), "browser": round(seconds, 3)}

        with contextlib.suppress(StoreError):
            await self.db.run(upd)

    async def record(self, sid: str, **fields: Any) -> None:
        await self.db.run(self.fields(sid, **fields))

    @staticmethod
    def fields(sid: str, **fields: Any) -> Callable[[Db], None]:
        """Set `fields` on the session's row (within a transaction: `record`, or `transition`'s `also`)."""

        def upd(db: Db) -> None:
            row = db.get(SessionRow, sid)
            if row is None:
                raise SessionNotFound(sid)
            for k, v in fields.items():
                setattr(row, k, dict(v) if isinstance(v, dict) else v)

        return upd

    async def fail_quietly(self, sid: str, reason: str, hop: Hop, timings: dict[str, float]) -> None:
        """A failed boot: its timings and the move to failed, kept for `record_pending` when the store is down."""
        try:
            with contextlib.suppress(IllegalTransition, SessionNotFound):
                await self.record(sid, timings=timings)
                await self.transition(sid, Status.FAILED, reason, hop)
        except StoreError:
            self.unrecorded[sid] = (Status.FAILED, reason, hop)  # recorded once the store is back

    def is_unrecorded(self, session_id: str) -> bool:
        """Ended while the store was down; the end is not written yet."""
        return session_id in self.unrecorded

    async def record_pending(self) -> int:
        """Record ends that happened while the store was down (and release their leases); returns how many."""
        done = 0
        for sid, (status, reason, hop) in list(self.unrecorded.items()):
            try:
                with contextlib.suppress(IllegalTransition, SessionNotFound):
                    await self.transition(sid, status, reason, hop)
                await self.ipam.release(sid)
            except StoreError:
                return done  # still down: try again on the next pass
            self.unrecorded.pop(sid, None)
            done += 1
        return done

    async def transition(
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
            return self._move(db, row, target, reason, hop, timings, also)

        view = await self.db.run(move)
        await self._moved(view, target, hop)
        return view

    async def end_many(
        self, sids: Sequence[str], target: Status, reason: str | None, hop: Hop | None = None
    ) -> list[SessionView]:
        """Move this node's sessions `sids` to the terminal `target` in ONE transaction (a drain's group commit),
        each exactly as `transition` moves one: its webhook event, its timeline entry, then its change notification
        and the terminal hooks. Sessions already ended, gone or another node's are left out. Returns the views of
        those moved; StoreError: none was."""
        reasons = {sid: self.codes.scrub(sid, reason) for sid in sids}
        node = self.settings.node_id

        def move_all(db: Db) -> list[SessionView]:
            views = []
            mine = select(SessionRow).where(SessionRow.id.in_(list(reasons)), SessionRow.node_id == node)
            for row in db.scalars(mine.order_by(SessionRow.id).with_for_update()):  # one lock order: no deadlock
                with contextlib.suppress(IllegalTransition):  # ended meanwhile: nothing was written for it
                    views.append(self._move(db, row, target, reasons[row.id], hop))
            return views

        views = await self.db.run(move_all)
        for view in views:
            await self._moved(view, target, hop)
        return views

    def _move(
        self,
        db: Db,
        row: SessionRow,
        target: Status,
        reason: str | None,
        hop: Hop | None,
        timings: dict[str, float] | None = None,
        also: Callable[[Db], object] | None = None,
    ) -> SessionView:
        """Inside a transaction: move `row` to `target` (IllegalTransition before anything is written)."""
        sid = row.id
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

    async def _moved(self, view: SessionView, target: Status, hop: Hop | None) -> None:
        """After a move committed: the live views, the waiters, the failure count, the terminal hooks (in order)."""
        sid = view.id
        if view.status.booting or view.status.terminal:
            self.live.pop(sid, None)
        else:
            self.live[sid] = view
        self.changes.notify(sid)
        if target is Status.FAILED:
            self.metrics.failures.labels(hop.value if hop else "unknown").inc()
        if view.status.terminal:
            for callback in self.on_terminal:
                with contextlib.suppress(Exception):
                    await callback(view)
