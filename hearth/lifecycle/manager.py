"""The sandbox manager: the one place a sandbox is born, kept, adopted and ended — for browser sessions and CLI
sandboxes alike.

It owns, per sandbox: the spec (built by `spec`, the one builder), the agent secret (sealed in the store with the
vault's key ring, so a restarted controller can still talk to the agent), the readiness target, the undo stack of a
boot (which becomes the sandbox's own cleanup stack), the slot lease's release and the keep/destroy decision (from the
final state, `lifecycle.sandbox.keep`). Callers (the session service, CLI sandboxes, the warm pool) hold owner ids
or the `Sandbox` and its verbs. Only the lifecycle writes the `sandboxes` table (hearth/lifecycle/rows.py): the warm
pool's hand-out is `claim` here.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from hearth.agentlink.client import AgentClient
from hearth.config import Settings
from hearth.egress.gate import EgressGate
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.ipam import Ipam
from hearth.fabric.slot import Slot
from hearth.lifecycle import adoption, egress, readiness
from hearth.lifecycle.rows import SandboxRows
from hearth.lifecycle.sandbox import Final, Kind, Sandbox, SandboxState, keep
from hearth.proxy.plan import EgressPlan
from hearth.sandbox.base import Driver, SandboxSpec, StageMark, no_marks
from hearth.sandbox.specs import build as build_spec
from hearth.store.db import Database
from hearth.store.models import OwnerKind, SandboxRow
from hearth.vault.keys import KeyRing, VaultKeyError
from hearth.vault.seal import SealError

log = logging.getLogger("hearth.lifecycle")
DESTROY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Claimed:
    """A pooled sandbox handed to a new owner (`SandboxManager.claim`): the sandbox, the pool owner id it had, and a
    client for its agent under the pool's secret (to personalise it with the new one)."""

    sandbox: Sandbox
    pooled: str
    pool_agent: AgentClient


class SandboxManager:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        driver: Driver,
        ipam: Ipam,
        ring: KeyRing,
        home_driver: Driver | None = None,
        egress_domains: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.s = settings
        self.db = db
        self.driver = driver
        self.ipam = ipam
        self.ring = ring
        self.rows = SandboxRows(settings, db, ring)  # the one writer of the `sandboxes` table
        # CLI sandboxes need a persistent home: the main driver when it offers one, else `home_driver`.
        self.home_driver = driver if driver.offers.persistent_home else home_driver
        self._live: dict[str, Sandbox] = {}
        self.gate = EgressGate(settings)  # hearth/egress: which sandboxes go out (granted at boot), their drops
        # provider digest → its egress_domains (the controller's providers): HEARTH_EGRESS_POLICY=provider's names
        self.egress_domains: Mapping[str, tuple[str, ...]] = dict(egress_domains or {})
        self.egress = EgressPlan(settings, db)  # the local proxy, the user's upstream port, the extra CAs

    # ---- the one builder (pure: hearth/sandbox/specs.py, which `hearth sandbox plan` plans with too) ---------------
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
        """The spec of `owner`'s sandbox on `slot`. The secret and upstream proxy are the live sandbox's unless given
        (empty for one this controller does not run: destroying needs only the slot)."""
        live = self._live.get(owner)
        return build_spec(
            self.s,
            self.egress,
            owner,
            slot,
            secret=secret if secret is not None else (live.secret if live is not None else ""),
            desktop=desktop,
            providers=providers,
            home=home,
            egress_proxy=egress_proxy if egress_proxy is not None else (live.spec.egress_proxy if live else ""),
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
        return await (sb.alive() if sb.driver is not None else self.driver_for(sb.kind).alive(sb.spec))

    async def stored(self) -> list[SandboxRow]:
        """Every sandbox row of this node's fabric (what survived the last controller; never another node's)."""
        return await self.rows.stored()

    def _sandbox(
        self,
        owner: str,
        kind: Kind,
        spec: SandboxSpec,
        state: SandboxState = SandboxState.BOOTING,
        pid: int | None = None,
        owner_kind: OwnerKind | None = None,
    ) -> Sandbox:
        """A sandbox run by this manager (its verbs reach its driver and `end` here)."""
        if owner_kind is None:
            owner_kind = OwnerKind.CLI if kind is Kind.CLI else OwnerKind.SESSION
        return Sandbox(
            owner,
            kind,
            spec,
            state,
            pid=pid,
            owner_kind=owner_kind,
            netns=self.s.dial_netns,
            driver=self.driver_for(kind),
            ender=lambda sb, final: self.end(sb.owner, final, kind=sb.kind),
        )

    def _cleanup_of(self, sb: Sandbox) -> AsyncExitStack:
        """The cleanup stack of a running sandbox (what a boot builds step by step): undone in reverse order."""
        stack = AsyncExitStack()
        stack.push_async_callback(self._release_quietly, sb.owner)
        stack.callback(self._forget_now, sb.owner)
        stack.push_async_callback(self.gate.revoke, sb.spec.slot.ip)
        stack.push_async_callback(self.rows.delete_quietly, sb.owner)
        stack.push_async_callback(self._destroy_quietly, self.driver_for(sb.kind), sb.spec)
        return stack

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
        mark: StageMark = no_marks,
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
        pooled = OwnerKind.POOL if ready is SandboxState.POOLED else None
        sb = self._sandbox(owner, kind, spec, owner_kind=pooled)
        current = asyncio.current_task()
        sb.boot = current if current is not None and not current.done() else None
        self._live[owner] = sb
        try:
            async with AsyncExitStack() as undo:
                undo.push_async_callback(self._release_quietly, owner)
                undo.callback(self._forget_now, owner)
                await self._grant(sb, signin=ready is SandboxState.POOLED)
                undo.push_async_callback(self.gate.revoke, spec.slot.ip)
                await self.rows.save(sb, driver.name)
                undo.push_async_callback(self.rows.delete_quietly, owner)
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
                await self.rows.save(sb, driver.name)
                sb.cleanup = undo.pop_all()  # success: the sandbox owns its resources until `end`
        finally:
            sb.boot = None
        return sb

    async def _keep_on_failure(self, sb: Sandbox, undo: AsyncExitStack) -> None:
        """A failed boot: the policy decides (once) whether the sandbox stays for debugging — with its lease and row."""
        if keep(Final.FAILED, self.s.keep_failed):
            log.warning("keeping failed sandbox for debugging (HEARTH_KEEP_FAILED)", extra={"session_id": sb.owner})
            sb.cleanup = undo.pop_all()  # kept with everything it holds, until a later `end` destroys it
            sb.move(SandboxState.KEPT)
            await self.rows.mark_kept_quietly(sb.owner)

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
            await self.rows.mark_kept_quietly(owner)
            return True
        if sb is not None and sb.boot is None:  # one this controller runs: its cleanup stack (processes, row, egress,
            await sb.close()  # its memory of it, its lease)
            return False
        if index is not None:
            spec = sb.spec if sb is not None else self.spec(owner, self.ipam.slot(index))
            await self._destroy_quietly(self.driver_for(sb.kind if sb is not None else kind), spec)
        if index is not None:
            await self.gate.revoke(self.ipam.slot(index).ip)
        self._forget_now(owner)
        await self.rows.delete_quietly(owner)
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
            secret = self.rows.unseal(row)
        except (SealError, VaultKeyError, ValueError) as exc:
            return f"its stored agent secret cannot be opened ({type(exc).__name__}); was the vault key changed?"
        if row.slot >= self.ipam.size:
            return f"its slot {row.slot} is outside today's address pool"
        home = Path(row.home) if row.home else None
        spec = self.spec(row.owner_id, self.ipam.slot(row.slot), desktop=row.desktop, home=home, secret=secret)
        state = SandboxState.POOLED if row.state == SandboxState.POOLED.value else SandboxState.RUNNING
        sb = self._sandbox(row.owner_id, kind, spec, state, pid=row.pid, owner_kind=OwnerKind(row.owner_kind))
        if (reason := await adoption.why_not(sb, row)) is not None:
            return reason
        try:
            await self._grant(sb, signin=True)  # its way out, as before the restart (provider unknown here)
        except HearthError as exc:
            return f"its egress cannot be granted: {exc.reason}"
        sb.cleanup = self._cleanup_of(sb)
        self._live[row.owner_id] = sb
        log.info("sandbox adopted", extra={"session_id": row.owner_id, "slot": row.slot})
        return None

    async def hand_egress(self, owner: str, url: str) -> None:
        """A pooled sandbox now runs for `owner`: its local proxy chains to their upstream port (`url`) from now on."""
        sb = self._live.get(owner)
        if sb is None or not url:
            return
        await self.egress.hand_to(sb.agent(), url)
        sb.spec = dataclasses.replace(sb.spec, egress_proxy=url)

    async def claim(
        self, candidates: Sequence[str], owner: str, kind: OwnerKind, providers: tuple[str, ...]
    ) -> Claimed | None:
        """Hand the first of the pooled sandboxes `candidates` still pooled in the store to `owner` (a session or a
        CLI sandbox; `kind`), with a new agent secret and `providers`: one store transaction (hearth/lifecycle/rows.py)
        — None when every one was taken. Returns the sandbox and a client for its agent still under the pool's
        secret, which the caller personalises (the agent refuses that secret from then on)."""
        secret = secrets.token_urlsafe(32)
        pooled = await self.rows.claim(candidates, owner, kind, self.rows.seal(owner, secret))
        if pooled is None:
            return None
        pool_agent = self._live[pooled].agent()
        return Claimed(self.hand_over(pooled, owner, kind, secret, providers), pooled, pool_agent)

    async def retire(self, pooled: str) -> bool:
        """Take the pooled sandbox `pooled` out of the pool (in the store first: a claim elsewhere wins) to end it."""
        sb = self._live.get(pooled)
        if sb is None or sb.state is not SandboxState.POOLED or not await self.rows.retire(pooled):
            return False
        sb.move(SandboxState.RUNNING)
        return True

    def hand_over(self, pooled: str, owner: str, kind: OwnerKind, secret: str, providers: tuple[str, ...]) -> Sandbox:
        """The pooled sandbox `pooled` (claimed in the store) runs for `owner` from now on, with a new agent secret
        and provider digests."""
        old = self._live.pop(pooled)
        spec = dataclasses.replace(old.spec, session_id=owner, secret=secret, providers=providers)
        sb = self._sandbox(owner, old.kind, spec, SandboxState.POOLED, pid=old.pid, owner_kind=kind)
        sb.move(SandboxState.RUNNING)
        old.cleanup.pop_all()  # the new owner's stack replaces it (same resources, the new owner's id)
        old.state = SandboxState.GONE
        sb.cleanup = self._cleanup_of(sb)
        self._live[owner] = sb
        self.gate.retarget(spec.slot.ip, owner, egress.domains(self.s, self.egress_domains, self.egress, providers))
        return sb

    async def _grant(self, sb: Sandbox, *, signin: bool) -> None:
        """Grant `sb` its way out when HEARTH_EGRESS wants it to have one (hearth/lifecycle/egress.py)."""
        if (way := egress.grant(self.s, self.egress_domains, self.egress, sb, signin=signin)) is not None:
            await self.gate.grant(way)

    # ---- internals ---------------------------------------------------------------------------------------------
    def forget_all(self) -> None:
        """Drop this controller's memory of its sandboxes (they keep running): what a restart does; for tests."""
        self._live.clear()

    def _forget_now(self, owner: str) -> None:
        sb = self._live.pop(owner, None)
        if sb is not None:
            sb.state = SandboxState.GONE

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
