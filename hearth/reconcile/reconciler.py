"""The reconciler, run at startup (in the background: /health comes up at once) and periodically.

1. Sandboxes the store records (table `sandboxes`) but this controller does not run — they outlived the previous
   controller: each one whose session is live, whose processes still run and whose agent answers with the stored
   secret is adopted; any other is failed (its session, with the logged reason) and removed. A sandbox row with no
   session row is removed with a logged reason. Kept (HEARTH_KEEP_FAILED) sandboxes are left alone.
2. Sessions the store calls active but no sandbox backs: one still `queued` (admitted, its lease held, its boot not
   begun) joins this controller's boot queue again, oldest first, and boots in its turn; a boot the restart
   interrupted (`starting`: its sandbox half built, and possibly what brought the controller down) or a row with no
   sandbox is failed with a reason, and whatever the boot left is removed.
3. Leases held by ended or unknown sessions are released (not those of kept sandboxes).
3. Resources hearth named (namespaces, ports, directories) whose slot no active session leases are reclaimed. Their
   slots are quarantined by a lease first, so no new session can be handed a slot while its leftovers are being
   removed, and the quarantine is lifted only after the driver waited for the old processes to exit.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as Db

from hearth.clisandbox.homes import pooled_home
from hearth.clisandbox.manager import mark_stopped
from hearth.errors import Hop
from hearth.fabric import netlink, ports
from hearth.fabric.ipam import Ipam
from hearth.lifecycle.sandbox import Final, Kind, SandboxState
from hearth.reconcile.inventory import scan
from hearth.reconcile.ports import Boots, Records, Sessions
from hearth.session.states import TERMINAL, Status
from hearth.session.view import SessionView
from hearth.store.models import LeaseRow, OwnerKind, SandboxRow, SessionRow

log = logging.getLogger("hearth.reconcile")
QUARANTINE = "reclaim-"


@dataclass
class Report:
    failed_sessions: list[str] = field(default_factory=list)
    readmitted_sessions: list[str] = field(default_factory=list)  # `queued` at the restart: booted now
    adopted_sessions: list[str] = field(default_factory=list)
    adopted_cli: list[str] = field(default_factory=list)
    adopted_pooled: list[str] = field(default_factory=list)
    removed_sandboxes: dict[str, str] = field(default_factory=dict)  # owner → reason
    released_leases: list[str] = field(default_factory=list)
    reclaimed: dict[int, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def actions(self) -> int:
        return len(self.failed_sessions) + len(self.released_leases) + len(self.reclaimed) + len(self.removed_sandboxes)


class Reconciler:
    def __init__(self, service: Sessions, records: Records, boots: Boots) -> None:
        """`service`, `records`, `boots`: the sessions as the reconciler sees them (hearth/reconcile/ports.py)."""
        self.service = service
        self.records = records
        self.boots = boots
        self.settings = service.settings
        self._lock = asyncio.Lock()

    async def run_once(self) -> Report:
        async with self._lock:
            report = Report()
            await self._ended_in_store(report)
            await self._sandboxes(report)
            self.service.adopted_all()  # every surviving sandbox is adopted (or removed): unknown means unknown
            await self._sessions(report)
            await self._leases(report)
            await self._orphans(report)
            m = self.service.metrics.reconciler_actions
            for name, n in (
                ("session_failed", len(report.failed_sessions)),
                ("lease_released", len(report.released_leases)),
                ("orphan_reclaimed", len(report.reclaimed)),
            ):
                if n:
                    m.labels(name).inc(n)
            if report.actions or report.readmitted_sessions:
                log.info("reconciled", extra={"report": report.__dict__})
            return report

    async def _sandboxes(self, report: Report) -> None:
        svc = self.service
        mgr = svc.sandboxes
        if not svc.settings.keep_failed:  # kept for debugging while HEARTH_KEEP_FAILED was on; it is off now
            for owner in await mgr.end_stored(only_kept=True):
                report.removed_sandboxes[owner] = "kept for debugging; HEARTH_KEEP_FAILED is off"
        rows = [
            row
            for row in await mgr.stored()
            if mgr.get(row.owner_id) is None
            and not self.boots.is_booting(row.owner_id)
            and row.state != SandboxState.KEPT.value
        ]
        sessions = await svc.db.run(lambda db: _sessions_of(db, [r.owner_id for r in rows]))  # one statement
        for row in rows:
            owner = row.owner_id
            if row.owner_kind is OwnerKind.CLI:
                reason = await mgr.adopt(row)
                if reason is None:
                    report.adopted_cli.append(owner)
                    continue
                log.warning("CLI sandbox not adopted: %s", reason, extra={"session_id": owner})
                await mgr.end(owner, Final.DONE, row.slot, Kind.CLI)
                await svc.db.run(lambda db, o=owner: mark_stopped(db, o))  # type: ignore[misc]
                report.removed_sandboxes[owner] = reason
                continue
            if row.owner_kind is OwnerKind.POOL:  # a warm-pool sandbox: adopted back into the pool, or removed
                pooled = row.state == SandboxState.POOLED.value and svc.pool.enabled
                reason = (await mgr.adopt(row)) if pooled else "the pool is off or it was still booting"
                if reason is None:
                    svc.pool.adopted(owner)
                    log.info("pooled sandbox adopted", extra={"session_id": owner})
                    report.adopted_pooled.append(owner)
                    continue
                log.warning("pooled sandbox removed: %s", reason, extra={"session_id": owner})
                await mgr.end(owner, Final.DONE, row.slot, Kind(row.kind))
                if row.kind == Kind.CLI.value:  # a pooled CLI sandbox's own home directory (never a user's)
                    await asyncio.to_thread(shutil.rmtree, pooled_home(svc.settings, owner).parent, True)
                report.removed_sandboxes[owner] = reason
                continue
            session = sessions.get(owner)
            if session is None or Status(session.status) in TERMINAL:
                reason = "no session row" if session is None else f"its session is {session.status}"
                log.warning("sandbox without a live session removed: %s", reason, extra={"session_id": owner})
                await mgr.end(owner, Final.DONE, row.slot)
                report.removed_sandboxes[owner] = reason
                continue
            if Status(session.status).booting or row.state != SandboxState.RUNNING.value:
                continue  # a boot the restart interrupted: failed (and removed) by `_sessions`
            reason = await mgr.adopt(row)
            if reason is None:
                report.adopted_sessions.append(owner)
                view = SessionView.of(session)
                for callback in svc.on_adopted:
                    svc.spawn(callback(view), f"on-adopted-{owner}")
                continue
            log.warning("sandbox not adopted: %s", reason, extra={"session_id": owner})
            await svc.end(
                owner, Status.FAILED, f"[driver] not adopted after a controller restart: {reason}", Hop.DRIVER
            )
            await mgr.end(owner, Final.DONE, row.slot)  # failed for a reason of its own: never kept
            report.failed_sessions.append(owner)
            report.removed_sandboxes[owner] = reason

    async def _ended_in_store(self, report: Report) -> None:
        """Sandboxes this node runs whose session the store records ended — failed by a sweeper while this node was
        cut off from the store (issue 24): the store is authoritative, whatever this node still holds in memory.
        Their viewers close, their sandboxes and leases go, in this pass."""
        svc = self.service
        mine = [o for o in svc.live_sessions() if not self.boots.is_booting(o) and not self.records.is_unrecorded(o)]
        if not mine:
            return

        def statuses(db: Db) -> dict[str, tuple[str, int | None]]:
            rows = db.execute(select(SessionRow.id, SessionRow.status, SessionRow.slot).where(SessionRow.id.in_(mine)))
            return {str(i): (str(st), slot) for i, st, slot in rows}

        ended = [t.value for t in TERMINAL]
        for owner, (status, slot) in (await svc.db.run(statuses)).items():
            sb = svc.sandboxes.get(owner)
            if status not in ended or sb is None or sb.state is SandboxState.KEPT:
                continue
            why = f"its session is {status} in the store (ended while this node could not reach it)"
            log.warning("sandbox of a session ended elsewhere removed", extra={"session_id": owner, "status": status})
            svc.stop_event(owner).set()  # its viewers close
            await svc.sandboxes.end(owner, Final.DONE, slot)  # the sandbox, its row and its lease
            report.removed_sandboxes[owner] = why

    async def _sessions(self, report: Report) -> None:
        svc, records, boots = self.service, self.records, self.boots
        for view in sorted(await records.list_active(), key=lambda v: _aware(v.created_at)):  # oldest first: line order
            if boots.is_booting(view.id) or records.is_unrecorded(view.id) or svc.sandboxes.get(view.id) is not None:
                continue
            if svc.readmit(view):  # `queued`: admitted, never begun — it boots now, in its turn
                report.readmitted_sessions.append(view.id)
                continue
            if view.status.booting or view.slot is None:
                reason = "[driver] the controller restarted while this sandbox was booting"
            else:
                reason = "[driver] no sandbox is recorded for this session (the controller cannot reach it)"
            log.warning("active session without a sandbox failed: %s", reason, extra={"session_id": view.id})
            await svc.end(view.id, Status.FAILED, reason, Hop.DRIVER)
            await svc.sandboxes.end(view.id, Final.DONE, view.slot)
            report.failed_sessions.append(view.id)

    async def _leases(self, report: Report) -> None:
        ended = [t.value for t in TERMINAL]
        where = Ipam.mine(self.settings.fabric_netns, self.settings.node_id)  # this node's leases only

        def stale(db: Db) -> list[str]:
            """One statement, whatever the number of leases: each lease with its session's status and its sandbox
            row's state (either may be missing)."""
            stmt = (
                select(LeaseRow.session_id, LeaseRow.owner_kind, SessionRow.status, SandboxRow.state)
                .outerjoin(SessionRow, SessionRow.id == LeaseRow.session_id)
                .outerjoin(SandboxRow, SandboxRow.owner_id == LeaseRow.session_id)
                .where(*where)
            )
            out = []
            for owner, kind, status, state in db.execute(stmt):
                if kind in (OwnerKind.RECLAIM, OwnerKind.CLI) or state == SandboxState.KEPT.value:
                    continue  # quarantine leases, running CLI sandboxes and kept failed sandboxes are not sessions
                if kind is OwnerKind.POOL:  # a pooled sandbox's: stale once it has no row
                    if state is None:
                        out.append(owner)
                    continue
                if status is None or status in ended:
                    out.append(owner)
            return out

        for sid in await self.service.db.run(stale):
            if self.boots.is_booting(sid) or self.service.sandboxes.get(sid) is not None:
                continue  # this controller boots or runs its sandbox, whose end releases the lease
            await self.service.ipam.release(sid)
            report.released_leases.append(sid)

    async def _orphans(self, report: Report) -> None:
        inv = await scan(self.settings)
        fabric, node = self.settings.fabric_netns, self.settings.node_id

        def quarantine(db: Db) -> list[tuple[int, bool]]:
            """Orphan slots, each with whether a quarantine lease now holds it (slots outside today's pool are
            still ours by name but cannot be leased, so they need none)."""
            leased = set(db.scalars(select(LeaseRow.slot).where(*Ipam.mine(fabric, node))))
            taken = []
            for index in sorted(inv.slots() - leased):
                if index >= self.service.ipam.size:
                    taken.append((index, False))
                    continue
                slot = self.service.ipam.slot(index)
                try:
                    with db.begin_nested():
                        db.add(
                            LeaseRow(
                                node_id=node,
                                fabric=fabric,
                                slot=index,
                                ip=str(slot.ip),
                                session_id=f"{QUARANTINE}{index}",
                                owner_kind=OwnerKind.RECLAIM,
                            )
                        )
                except IntegrityError:
                    continue  # a new session leased it meanwhile: it owns (and replaces) those names
                taken.append((index, True))
            return taken

        for index, held in await self.service.db.run(quarantine):
            what = inv.describe(index)
            try:
                await self._reclaim(index)
                report.reclaimed[index] = what
            except Exception as exc:
                report.errors.append(f"slot {index}: {type(exc).__name__}: {exc}")
                log.exception("reclaiming slot failed", extra={"slot": index})
            finally:
                if held:
                    await self.service.ipam.release(f"{QUARANTINE}{index}")

    async def _reclaim(self, index: int) -> None:
        """Remove every resource of slot `index`: the driver first (it waits for processes to exit), then whatever
        another driver may have left under the same derived names."""
        svc = self.service
        slot = svc.ipam.slot(index)
        await svc.sandboxes.destroy_slot(f"{QUARANTINE}{index}", index)
        await ports.remove_port(self.settings, slot.veth_host)
        await ports.remove_port(self.settings, slot.tap_name)
        await asyncio.to_thread(netlink.remove_netns, slot.netns)
        await asyncio.to_thread(shutil.rmtree, svc.sandboxes.spec(f"{QUARANTINE}{index}", slot).workdir, True)


def _sessions_of(db: Db, owners: list[str]) -> dict[str, SessionRow]:
    """The session rows of `owners` (those that have one), in one statement."""
    if not owners:
        return {}
    return {row.id: row for row in db.scalars(select(SessionRow).where(SessionRow.id.in_(owners)))}


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
