"""The sandbox manager: the one place a sandbox is born, kept, adopted and ended — for browser sessions and CLI
sandboxes alike.

It owns, per sandbox: the spec (built by `spec`, the one builder), the agent secret (sealed in the store with the
vault's key ring, so a restarted controller can still talk to the agent), the readiness target, the undo stack of a
boot, the slot lease's release and the keep/destroy decision (from the final state, `lifecycle.sandbox.keep`).
Callers (the session service, CLI sandboxes) hold owner ids only.

Sandboxes outlive the controller: each runs in its own session (no --die-with-parent); its row records the
launcher's PID and start time. `adopt` takes one over after a restart when its agent answers with the stored secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from hearth.agentlink.client import AgentClient, AgentRefused
from hearth.config import Settings
from hearth.egress.gate import EgressGate
from hearth.egress.policy import Grant, wants_egress
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.lifecycle import readiness
from hearth.lifecycle.sandbox import Final, Kind, Sandbox, SandboxState, keep
from hearth.proxy.plan import EgressPlan
from hearth.sandbox.base import Driver, SandboxSpec, StageMark
from hearth.sandbox.procs import same_process, start_time
from hearth.store.db import Database
from hearth.store.models import SandboxRow
from hearth.vault.keys import KeyRing, VaultKeyError
from hearth.vault.seal import Sealed, SealError, seal, unseal

log = logging.getLogger("hearth.lifecycle")
DESTROY_TIMEOUT = 30.0
ADOPT_TIMEOUT = 5.0
AAD_PURPOSE = "agent-secret"  # the sealed secret is bound to ("sandbox:<owner>", this)


def _noop(_stage: str) -> None:
    return None


class SandboxManager:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        driver: Driver,
        ipam: Ipam,
        ring: KeyRing,
        home_driver: Driver | None = None,
    ) -> None:
        self.s = settings
        self.db = db
        self.driver = driver
        self.ipam = ipam
        self.ring = ring
        # CLI sandboxes need a persistent home: the main driver when it offers one, else `home_driver`.
        self.home_driver = driver if driver.offers.persistent_home else home_driver
        self._live: dict[str, Sandbox] = {}
        self.gate = EgressGate(settings)  # hearth/egress: which sandboxes go out (granted at boot), their drops
        self.egress_domains: dict[str, tuple[str, ...]] = {}  # provider digest → its egress_domains (the app's)
        self.egress = EgressPlan(settings, db)  # the local proxy, the user's upstream port, the extra CAs

    # ---- the one builder (pure) --------------------------------------------------------------------------------
    def spec(
        self,
        owner: str,
        slot: Slot,
        *,
        desktop: bool = True,
        providers: tuple[str, ...] = (),
        home: Path | None = None,
        secret: str | None = None,
        egress_proxy: str | None = None,
    ) -> SandboxSpec:
        """The spec of `owner`'s sandbox on `slot`. The secret is the live sandbox's unless given (empty for one this
        controller does not run: destroying needs only the slot)."""
        s = self.s
        live = self._live.get(owner)
        return SandboxSpec(
            session_id=owner,
            slot=slot,
            workdir=s.data_dir / "sandboxes" / slot.netns,
            secret=secret if secret is not None else (live.secret if live is not None else ""),
            screen=s.screen,
            start_url=s.start_url,
            chromium=s.chromium and desktop,
            browser_on_request=s.browser_start == "queued",
            rfb_port=s.rfb_port,
            agent_port=s.agent_port,
            desktop=desktop,
            vnc_server=s.vnc_server,
            home=home,
            providers=providers,
            local_proxy=self.egress.local_proxy,
            egress_proxy=egress_proxy if egress_proxy is not None else (live.spec.egress_proxy if live else ""),
            extra_ca=self.egress.extra_ca,
            egress_allow=self.egress.allow,
        )

    def target(self, spec: SandboxSpec) -> readiness.Target:
        return readiness.Target.of(spec, self.s.dial_netns)

    def driver_for(self, kind: Kind) -> Driver:
        if kind is Kind.CLI:
            if self.home_driver is None:
                raise HearthError(
                    Hop.DRIVER,
                    f"the {self.driver.name} driver offers no persistent home for CLI sandboxes",
                    "run hearth with the netns driver available (bubblewrap)",
                )
            return self.home_driver
        return self.driver

    # ---- queries -----------------------------------------------------------------------------------------------
    def get(self, owner: str) -> Sandbox | None:
        return self._live.get(owner)

    def secret_of(self, owner: str) -> str | None:
        sb = self._live.get(owner)
        return sb.secret if sb is not None and sb.state is not SandboxState.GONE else None

    def slot_of(self, owner: str) -> int | None:
        sb = self._live.get(owner)
        return sb.slot if sb is not None else None

    def owners(self) -> list[str]:
        return list(self._live)

    def is_booting(self, owner: str) -> bool:
        sb = self._live.get(owner)
        return sb is not None and sb.boot is not None and not sb.boot.done()

    async def alive(self, owner: str) -> bool:
        sb = self._live.get(owner)
        if sb is None:
            return False
        return await self.driver_for(sb.kind).alive(sb.spec)

    async def stored(self) -> list[SandboxRow]:
        """Every sandbox row of this node's fabric (what survived the last controller; never another node's)."""
        fabric, node = self.s.fabric_netns, self.s.node_id
        return await self.db.run(
            lambda db: list(
                db.scalars(select(SandboxRow).where(SandboxRow.node_id == node, SandboxRow.fabric == fabric))
            )
        )

    # ---- boot --------------------------------------------------------------------------------------------------
    async def boot(
        self,
        owner: str,
        kind: Kind,
        slot: Slot,
        *,
        desktop: bool = True,
        providers: tuple[str, ...] = (),
        home: Path | None = None,
        mark: StageMark = _noop,
        explain: Callable[[HearthError], Awaitable[HearthError]] | None = None,
        ready: SandboxState = SandboxState.RUNNING,
        egress_proxy: str = "",
    ) -> Sandbox:
        """Boot `owner`'s sandbox on `slot` (its lease is already held: the manager releases it when the sandbox
        ends) until it is ready. On failure every acquired resource is undone (or, for HEARTH_KEEP_FAILED, kept with
        its lease and row) and a HearthError is raised — `explain` may replace it while the sandbox still exists."""
        driver = self.driver_for(kind)
        token = secrets.token_urlsafe(32)
        spec = self.spec(
            owner, slot, desktop=desktop, providers=providers, home=home, secret=token, egress_proxy=egress_proxy
        )
        sb = Sandbox(owner, kind, spec)
        current = asyncio.current_task()
        sb.boot = current if current is not None and not current.done() else None
        self._live[owner] = sb
        try:
            async with AsyncExitStack() as undo:
                undo.push_async_callback(self._release_quietly, owner)
                undo.push_async_callback(self._forget, owner)
                await self._grant(sb, signin=ready is SandboxState.POOLED)
                undo.push_async_callback(self.gate.revoke, spec.slot.ip)
                await self._save(sb, driver)
                undo.push_async_callback(self._delete_row_quietly, owner)
                undo.push_async_callback(self._destroy_quietly, driver, spec)
                try:
                    info = await driver.start(spec, mark)
                    sb.pid = info.pid
                    await readiness.wait_ready(self.target(spec), time.monotonic() + self.s.ready_timeout, mark)
                except HearthError as exc:
                    err = (await explain(exc)) if explain is not None else exc
                    await self._keep_on_failure(sb, undo)
                    raise err from exc
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("sandbox boot crashed", extra={"session_id": owner})
                    await self._keep_on_failure(sb, undo)
                    raise HearthError(
                        Hop.DRIVER,
                        "internal error while booting the sandbox; the controller log has the details",
                        "see the controller log",
                    ) from exc
                sb.move(ready)  # RUNNING, or POOLED for the warm pool (hearth/session/pool.py)
                await self._save(sb, driver)
                undo.pop_all()  # success: the sandbox owns its resources until `end`
        finally:
            sb.boot = None
        return sb

    async def _keep_on_failure(self, sb: Sandbox, undo: AsyncExitStack) -> None:
        """A failed boot: the policy decides (once) whether the sandbox stays for debugging — with its lease and row."""
        if keep(Final.FAILED, self.s.keep_failed):
            log.warning("keeping failed sandbox for debugging (HEARTH_KEEP_FAILED)", extra={"session_id": sb.owner})
            undo.pop_all()
            sb.move(SandboxState.KEPT)
            await self._mark_kept_quietly(sb.owner)

    # ---- end ---------------------------------------------------------------------------------------------------
    async def end(self, owner: str, final: Final, slot: int | None = None, kind: Kind = Kind.SESSION) -> bool:
        """End `owner`'s sandbox: destroyed — its row deleted, its lease released — unless the policy keeps it
        (failed + HEARTH_KEEP_FAILED: then it stays with its lease and its row marked `kept`). `slot` finds one this
        controller does not run. Returns whether it was kept. Never raises for a store outage (logged; the
        reconciler finishes the job)."""
        sb = self._live.get(owner)
        if sb is not None and sb.boot is not None and not sb.boot.done() and sb.boot is not asyncio.current_task():
            sb.boot.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sb.boot
            sb = self._live.get(owner)
        index = sb.slot if sb is not None else slot
        if keep(final, self.s.keep_failed):
            log.warning("keeping failed sandbox for debugging (HEARTH_KEEP_FAILED)", extra={"session_id": owner})
            if sb is not None and sb.state is not SandboxState.KEPT:
                sb.move(SandboxState.KEPT)
            await self._mark_kept_quietly(owner)
            return True
        if index is not None:
            spec = sb.spec if sb is not None else self.spec(owner, self.ipam.slot(index))
            await self._destroy_quietly(self.driver_for(sb.kind if sb is not None else kind), spec)
        if index is not None:
            await self.gate.revoke(self.ipam.slot(index).ip)
        self._forget_now(owner)
        await self._delete_row_quietly(owner)
        await self._release_quietly(owner)
        return False

    async def end_stored(self, only_kept: bool = False) -> list[str]:
        """Destroy the browser sandboxes of this node still on record: every one (a drain, after the sessions
        ended: what a teardown the stop interrupted or a kept failure left), or only those kept for debugging (the
        reconciler, once HEARTH_KEEP_FAILED is off again). Returns their owners."""
        rows = [
            r
            for r in await self.stored()
            if r.kind == Kind.SESSION.value and (r.state == SandboxState.KEPT.value or not only_kept)
        ]
        for row in rows:
            await self.end(row.owner_id, Final.DONE, row.slot, Kind.SESSION)
        return [r.owner_id for r in rows]

    async def destroy_slot(self, owner: str, index: int) -> None:
        """Remove whatever runs on slot `index` (a leftover: no sandbox of this controller), raising on failure."""
        await asyncio.wait_for(self.driver.destroy(self.spec(owner, self.ipam.slot(index))), 60)

    # ---- adopt -------------------------------------------------------------------------------------------------
    async def adopt(self, row: SandboxRow, desktop: bool = True) -> str | None:
        """Run the sandbox of `row` from now on when it still lives (launcher PID + start time, or the driver finds
        its processes) and its agent answers the stored secret; returns None then, else the reason it cannot be."""
        kind = Kind(row.kind)
        try:
            secret = unseal(
                self.ring, Sealed(row.key_id, row.nonce, row.ciphertext), f"sandbox:{row.owner_id}", AAD_PURPOSE
            ).decode()
        except (SealError, VaultKeyError, ValueError) as exc:
            return f"its stored agent secret cannot be opened ({type(exc).__name__}); was the vault key changed?"
        if row.slot >= self.ipam.size:
            return f"its slot {row.slot} is outside today's address pool"
        home = Path(row.home) if row.home else None
        spec = self.spec(row.owner_id, self.ipam.slot(row.slot), desktop=row.desktop, home=home, secret=secret)
        driver = self.driver_for(kind)
        launcher = row.pid is not None and await asyncio.to_thread(same_process, row.pid, row.pid_start)
        if not launcher and not await driver.alive(spec):
            return "its processes are gone"
        agent = AgentClient(self.s.dial_netns, str(spec.slot.ip), spec.agent_port, secret)
        try:
            await agent.call("GET", "/v1/login", timeout=ADOPT_TIMEOUT)
        except AgentRefused as exc:
            if exc.status == 401:
                return "its agent refused the stored secret (not the sandbox hearth started there)"
        except HearthError as exc:
            return f"its agent does not answer: {exc.reason}"
        except (OSError, TimeoutError) as exc:
            return f"its agent does not answer: {type(exc).__name__}"
        state = SandboxState.POOLED if row.state == SandboxState.POOLED.value else SandboxState.RUNNING
        sb = Sandbox(row.owner_id, kind, spec, state, pid=row.pid)
        try:
            await self._grant(sb, signin=True)  # its way out, as before the restart (provider unknown here)
        except HearthError as exc:
            return f"its egress cannot be granted: {exc.reason}"
        self._live[row.owner_id] = sb
        log.info("sandbox adopted", extra={"session_id": row.owner_id, "slot": row.slot})
        return None

    async def hand_egress(self, owner: str, url: str) -> None:
        """A pooled sandbox now runs for `owner`: its local proxy chains to their upstream port (`url`) from now on."""
        sb = self._live.get(owner)
        if sb is None or not url:
            return
        agent = AgentClient(self.s.dial_netns, str(sb.spec.slot.ip), sb.spec.agent_port, sb.spec.secret)
        await self.egress.hand_to(agent, url)
        sb.spec = dataclasses.replace(sb.spec, egress_proxy=url)

    def hand_over(self, pooled: str, owner: str, secret: str, providers: tuple[str, ...]) -> Sandbox:
        """The pooled sandbox `pooled` (claimed in the store by the pool) runs for `owner` from now on, with a new
        agent secret and provider digests (the pool personalises the agent itself)."""
        old = self._live.pop(pooled)
        spec = dataclasses.replace(old.spec, session_id=owner, secret=secret, providers=providers)
        sb = Sandbox(owner, old.kind, spec, SandboxState.POOLED, pid=old.pid)
        sb.move(SandboxState.RUNNING)
        old.state = SandboxState.GONE
        self._live[owner] = sb
        self.gate.retarget(spec.slot.ip, owner, self._domains(providers))
        return sb

    # ---- egress (hearth/egress) ---------------------------------------------------------------------------------
    def _domains(self, providers: tuple[str, ...]) -> tuple[str, ...] | None:
        """The names a sandbox may resolve under HEARTH_EGRESS_POLICY=provider (None: any): its providers' domains;
        without a provider (a CLI sandbox, a pooled one not yet handed out): every provider's."""
        if self.s.egress_policy != "provider":
            return None
        chosen = providers or tuple(self.egress_domains)
        names = {d for p in chosen for d in self.egress_domains.get(p, ())}
        names |= self.egress.proxy_names()  # the agent's local proxy resolves the upstream proxy's name there
        return tuple(sorted(names))

    async def _grant(self, sb: Sandbox, *, signin: bool) -> None:
        """Grant `sb` its way out when HEARTH_EGRESS wants it to have one (hearth/egress/policy.py)."""
        cli = sb.kind is Kind.CLI
        if wants_egress(self.s, cli=cli, provider="signin" if signin or sb.spec.providers else None):
            domains = self._domains(() if cli else sb.spec.providers)
            await self.gate.grant(Grant(sb.spec.slot.ip, sb.owner, domains))

    # ---- internals ---------------------------------------------------------------------------------------------
    async def _save(self, sb: Sandbox, driver: Driver) -> None:
        sealed = seal(self.ring, sb.secret.encode(), f"sandbox:{sb.owner}", AAD_PURPOSE)
        started = await asyncio.to_thread(start_time, sb.pid) if sb.pid is not None else None
        fabric = self.s.fabric_netns

        def upsert(db: Db) -> None:
            row = db.get(SandboxRow, sb.owner)
            if row is None:
                row = SandboxRow(owner_id=sb.owner)
                db.add(row)
            row.kind, row.state, row.fabric, row.slot = sb.kind.value, sb.state.value, fabric, sb.slot
            row.node_id = self.s.node_id
            row.driver, row.desktop, row.pid, row.pid_start = driver.name, sb.spec.desktop, sb.pid, started
            row.home = str(sb.spec.home) if sb.spec.home is not None else None
            row.key_id, row.nonce, row.ciphertext = sealed.key_id, sealed.nonce, sealed.ciphertext

        await self.db.run(upsert)

    def forget_all(self) -> None:
        """Drop this controller's memory of its sandboxes (they keep running): what a restart does; for tests."""
        self._live.clear()

    def _forget_now(self, owner: str) -> None:
        sb = self._live.pop(owner, None)
        if sb is not None:
            sb.state = SandboxState.GONE

    async def _forget(self, owner: str) -> None:
        self._forget_now(owner)

    async def _mark_kept_quietly(self, owner: str) -> None:
        def mark(db: Db) -> None:
            row = db.get(SandboxRow, owner)
            if row is not None:
                row.state = SandboxState.KEPT.value

        try:
            await self.db.run(mark)
        except StoreError:
            log.warning("kept sandbox not marked (store unavailable)", extra={"session_id": owner})

    async def _delete_row_quietly(self, owner: str) -> None:
        def delete(db: Db) -> None:  # one statement: a concurrent end that deleted it first is success, not a race
            db.execute(sql_delete(SandboxRow).where(SandboxRow.owner_id == owner))

        try:
            await self.db.run(delete)
        except StoreError:
            log.warning("sandbox row not deleted (store unavailable); the reconciler will", extra={"session_id": owner})

    async def _release_quietly(self, owner: str) -> None:
        try:
            await self.ipam.release(owner)
        except StoreError:
            log.warning("lease not released (store unavailable); the reconciler will", extra={"session_id": owner})

    async def _destroy_quietly(self, driver: Driver, spec: SandboxSpec) -> None:
        try:
            await asyncio.wait_for(driver.destroy(spec), DESTROY_TIMEOUT)
        except Exception:
            log.exception("destroying sandbox failed; the reconciler will retry", extra={"session_id": spec.session_id})
