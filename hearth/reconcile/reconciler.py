"""The reconciler, run at startup (in the background: /health comes up at once) and periodically.

1. Sessions the store calls active but this controller does not run: a boot interrupted by a crash is failed with
   a reason; a ready session whose sandbox died is failed; a live ready one is adopted.
2. Leases held by ended or unknown sessions are released.
3. Resources hearth named (namespaces, ports, directories) whose slot no active session leases are reclaimed. Their
   slots are quarantined by a lease first, so no new session can be handed a slot while its leftovers are being
   removed, and the quarantine is lifted only after the driver waited for the old processes to exit.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as Db

from hearth.clisandbox.manager import OWNER_PREFIX as CLI_OWNER
from hearth.errors import Hop
from hearth.fabric import netlink, ports
from hearth.reconcile.inventory import scan
from hearth.session.service import SessionService
from hearth.session.states import TERMINAL, Status
from hearth.store.models import LeaseRow, SessionRow

log = logging.getLogger("hearth.reconcile")
QUARANTINE = "reclaim-"


@dataclass
class Report:
    failed_sessions: list[str] = field(default_factory=list)
    adopted_sessions: list[str] = field(default_factory=list)
    released_leases: list[str] = field(default_factory=list)
    reclaimed: dict[int, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def actions(self) -> int:
        return len(self.failed_sessions) + len(self.released_leases) + len(self.reclaimed)


class Reconciler:
    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.settings = service.settings
        self._lock = asyncio.Lock()

    async def run_once(self) -> Report:
        async with self._lock:
            report = Report()
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
            if report.actions:
                log.info("reconciled", extra={"report": report.__dict__})
            return report

    async def _sessions(self, report: Report) -> None:
        svc = self.service
        for view in await svc.list_active():
            if svc.is_booting(view.id) or svc.is_unrecorded(view.id):
                continue
            if view.status.booting or view.slot is None:
                await svc.end(
                    view.id,
                    Status.FAILED,
                    "[driver] the controller restarted while this sandbox was booting",
                    Hop.DRIVER,
                )
                report.failed_sessions.append(view.id)
            elif await svc.driver.alive(svc.spec(view.id, svc.ipam.slot(view.slot))):
                svc.adopt(view.id, view.slot)
                report.adopted_sessions.append(view.id)
            else:
                await svc.end(view.id, Status.FAILED, "[driver] the sandbox's processes exited", Hop.DRIVER)
                report.failed_sessions.append(view.id)

    async def _leases(self, report: Report) -> None:
        ended = [t.value for t in TERMINAL]
        fabric = self.settings.fabric_netns

        def stale(db: Db) -> list[str]:
            leases = db.scalars(select(LeaseRow).where(LeaseRow.fabric == fabric))
            out = []
            for lease in leases:
                if lease.session_id.startswith((QUARANTINE, CLI_OWNER)):
                    continue  # quarantine leases and running CLI sandboxes are not sessions
                row = db.get(SessionRow, lease.session_id)
                if row is None or row.status in ended:
                    out.append(lease.session_id)
            return out

        for sid in await self.service.db.run(stale):
            if self.service.is_booting(sid):
                continue
            await self.service.ipam.release(sid)
            report.released_leases.append(sid)

    async def _orphans(self, report: Report) -> None:
        inv = await scan(self.settings)
        fabric = self.settings.fabric_netns

        def quarantine(db: Db) -> list[tuple[int, bool]]:
            """Orphan slots, each with whether a quarantine lease now holds it (slots outside today's pool are
            still ours by name but cannot be leased, so they need none)."""
            leased = set(db.scalars(select(LeaseRow.slot).where(LeaseRow.fabric == fabric)))
            taken = []
            for index in sorted(inv.slots() - leased):
                if index >= self.service.ipam.size:
                    taken.append((index, False))
                    continue
                slot = self.service.ipam.slot(index)
                try:
                    with db.begin_nested():
                        db.add(LeaseRow(fabric=fabric, slot=index, ip=str(slot.ip), session_id=f"{QUARANTINE}{index}"))
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
        spec = svc.spec(f"{QUARANTINE}{index}", slot)
        await asyncio.wait_for(svc.driver.destroy(spec), 60)
        await ports.remove_port(self.settings, slot.veth_host)
        await ports.remove_port(self.settings, slot.tap_name)
        await asyncio.to_thread(netlink.remove_netns, slot.netns)
        await asyncio.to_thread(shutil.rmtree, spec.workdir, True)
        svc.forget(spec.session_id)
