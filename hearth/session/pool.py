"""The warm pool: pre-started sandboxes in state POOLED of the one sandbox lifecycle (hearth/lifecycle/sandbox.py),
handed out to a new session in one step instead of a boot.

- Size per sign-in mode (HEARTH_POOL_SIZE, e.g. `remote_browser:2,direct:1`; empty: off). Refills boot through the
  boot queue at BACKGROUND priority (a person's boot always goes first) with the manager's one `boot`.
- A pooled sandbox's owner is `pool-<hex>`, of owner kind `pool` (the column of its lease and row); its lease and
  row are ordinary ones, so the reconciler adopts it after a crash (or removes it) like any sandbox.
- Hand-out is a claim in the database, made by the sandbox manager (the one writer of `sandboxes`:
  `SandboxManager.claim`, hearth/lifecycle/rows.py): two controllers (or two concurrent starts) never get the same
  sandbox; the row and the lease become the session's, with a NEW agent secret. Then the agent is personalised over
  its API with the pool secret (`POST /v1/personalise`), which it refuses from then on.
- Older than HEARTH_POOL_MAX_IDLE: recycled (destroyed; the refill boots a fresh one). `drain` ends them all.
- A desktop's refill is over once its browser shows and the pool holds an RFB connection to it (`standby`:
  hearth/session/standby.py), which the gateway hands the first viewer of its session instead of dialling.
- `cli:N`: CLI sandboxes (kind cli, no desktop, every prompt definition allowed), each with a home directory of its
  own (hearth/clisandbox/homes.py); `claim_cli` hands one to a user's CLI sandbox, which moves the person's home in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from hearth.clisandbox.homes import POOL_PREFIX, pooled_home
from hearth.config import Settings, parse_pool_sizes
from hearth.errors import HearthError, Hop
from hearth.lifecycle.manager import Claimed, SandboxManager
from hearth.lifecycle.sandbox import Final, Kind, Sandbox, SandboxState
from hearth.session.bootqueue import BootQueue, Priority
from hearth.session.browser import BrowserTurns
from hearth.session.standby import Standby
from hearth.store.models import OwnerKind
from hearth_agent.contract import routes
from hearth_agent.contract.document import Identity, personalise_body

log = logging.getLogger("hearth.pool")
POOL_OWNER = POOL_PREFIX
PERSONALISE_TIMEOUT = 5.0
REFILL_GRACE = 2.0  # seconds a desktop hand-over's refill waits for the session's first frame at most
MODES = {"remote_browser": True, "direct": False, "cli": False}  # mode → the sandbox has a desktop
CLI = "cli"  # the mode of pooled CLI sandboxes


class WarmPool:
    def __init__(
        self,
        settings: Settings,
        manager: SandboxManager,
        queue: BootQueue,
        on_change: Callable[[], None] | None = None,
        browsers: BrowserTurns | None = None,
        cli_digests: Callable[[], tuple[str, ...]] = tuple,
    ) -> None:
        self.s = settings
        self.browsers = browsers  # a pooled sandbox's browser starts within its refill's turn
        self.sizes = parse_pool_sizes(settings.warm_pool)
        self.mgr = manager
        self.queue = queue
        self.on_change = on_change
        self._filling: dict[str, tuple[str, asyncio.Task[None]]] = {}  # owner → (mode, its boot): a refill
        self._since: dict[str, float] = {}  # owner → monotonic time it became POOLED (or was adopted)
        self._grace: dict[str, asyncio.TimerHandle] = {}  # session → its hand-over's refill, waiting for a frame
        self._claiming = asyncio.Lock()
        self.hits = 0
        self.misses = 0
        self.cli_digests = cli_digests  # the prompt definitions a CLI sandbox may run
        self.standby = Standby()  # an RFB connection to each pooled desktop, for its session's first viewer

    @property
    def enabled(self) -> bool:
        return bool(self.sizes)

    # ---- queries -----------------------------------------------------------------------------------------------
    def ready(self, mode: str) -> list[Sandbox]:
        """The POOLED sandboxes for `mode` whose boot is over, oldest first: a boot moves its sandbox to POOLED, then
        saves its row, and only a row that says `pooled` can be claimed (offered earlier: a miss, and a cold boot)."""
        desktop, kind = MODES[mode], Kind.CLI if mode == CLI else Kind.SESSION
        out = []
        for owner in self.mgr.owners():
            sb = self.mgr.get(owner)
            if (
                sb
                and sb.owner_kind is OwnerKind.POOL
                and sb.state is SandboxState.POOLED
                and sb.boot is None
                and sb.spec.desktop is desktop
                and sb.kind is kind
            ):
                out.append(sb)
        return sorted(out, key=lambda sb: self._since.get(sb.owner, 0.0))

    def filling(self, mode: str) -> int:
        return sum(1 for m, task in self._filling.values() if m == mode and not task.done())

    def is_filling(self, owner: str) -> bool:
        entry = self._filling.get(owner)
        return entry is not None and not entry[1].done()

    def summary(self) -> dict[str, dict[str, int]]:
        return {m: {"size": n, "ready": len(self.ready(m)), "filling": self.filling(m)} for m, n in self.sizes.items()}

    # ---- refill and recycle ------------------------------------------------------------------------------------
    def refill(self) -> int:
        """Start the boots that bring every mode back to its size (never blocks); returns how many were started."""
        started = 0
        for mode, size in self.sizes.items():
            missing = size - len(self.ready(mode)) - self.filling(mode)
            for _ in range(max(0, missing)):
                owner = f"{POOL_OWNER}{secrets.token_hex(8)}"
                task = asyncio.create_task(self._fill(owner, mode), name=f"pool-fill-{owner}")
                self._filling[owner] = (mode, task)
                started += 1
        return started

    async def wait_filled(self) -> None:
        """Wait for the refills in flight (tests, the bench)."""
        while tasks := [t for _, t in self._filling.values() if not t.done()]:
            await asyncio.wait(tasks)

    async def _fill(self, owner: str, mode: str) -> None:
        try:
            lease = await self.mgr.ipam.acquire(owner, OwnerKind.POOL)
        except HearthError as exc:
            log.warning("pool refill skipped: %s", exc.reason, extra={"session_id": owner})
            self._filling.pop(owner, None)
            return
        kind = Kind.CLI if mode == CLI else Kind.SESSION
        try:
            if not self.queue.enter(owner, Priority.BACKGROUND):
                await self.queue.turn(owner)
            if mode == CLI:
                home = pooled_home(self.s, owner)
                await self.mgr.boot(
                    owner,
                    Kind.CLI,
                    lease.slot,
                    desktop=False,
                    home=home,
                    providers=self.cli_digests(),
                    ready=SandboxState.POOLED,
                )
            else:
                await self.mgr.boot(owner, Kind.SESSION, lease.slot, desktop=MODES[mode], ready=SandboxState.POOLED)
            if self.browsers is not None and mode != CLI:
                await self.browsers.start(owner)
            if MODES[mode] and (sb := self.mgr.get(owner)) is not None:
                await self.standby.hold(self.mgr.target(sb.spec))
            self._since[owner] = time.monotonic()
            log.info("pooled sandbox ready", extra={"session_id": owner, "mode": mode})
        except asyncio.CancelledError:
            await self._end(owner, lease.slot.index, kind)
            raise
        except HearthError as exc:
            log.warning("pool refill failed: %s", exc.reason, extra={"session_id": owner})
            await self._end(owner, lease.slot.index, kind)
        except Exception:
            log.exception("pool refill crashed", extra={"session_id": owner})
            await self._end(owner, lease.slot.index, kind)
        finally:
            self.queue.leave(owner)
            self._filling.pop(owner, None)
            if self.on_change is not None:
                self.on_change()

    async def recycle(self) -> int:
        """Destroy pooled sandboxes idle longer than HEARTH_POOL_MAX_IDLE, or whose processes exited (never handed
        out dead); returns how many."""
        now, n = time.monotonic(), 0
        for mode in self.sizes:
            for sb in self.ready(mode):
                too_old = now - self._since.get(sb.owner, now) > self.s.pool_max_idle
                if (too_old or not await sb.alive()) and await self._retire(sb.owner):
                    n += 1
        return n

    async def _retire(self, owner: str) -> bool:
        """End a pooled sandbox — only if still pooled (the claim in the database decides against a hand-out)."""
        async with self._claiming:
            if not await self.mgr.retire(owner):
                return False
        self._since.pop(owner, None)
        await self._end(owner)
        return True

    async def _end(self, owner: str, index: int | None = None, kind: Kind = Kind.SESSION) -> None:
        """End a pooled sandbox that was never handed out; a pooled CLI sandbox's own home directory goes too."""
        await self.mgr.end(owner, Final.DONE, index, kind)
        home = pooled_home(self.s, owner).parent
        if home.exists():
            await asyncio.to_thread(shutil.rmtree, home, True)

    def adopted(self, owner: str) -> None:
        """A pooled sandbox the reconciler adopted after a restart: its idle age starts now."""
        self._since[owner] = time.monotonic()

    # ---- hand-out ----------------------------------------------------------------------------------------------
    async def claim(self, sid: str, mode: str, providers: tuple[str, ...]) -> Sandbox | None:
        """Hand a pooled sandbox to session `sid` (which holds a lease and a session row): None on a miss. Raises
        HearthError when the claimed sandbox cannot be personalised (it is then removed)."""
        if mode not in self.sizes:
            return None
        return await self._hand_out(sid, mode, providers, OwnerKind.SESSION)

    async def claim_cli(self, owner: str) -> tuple[Sandbox, Path] | None:
        """Hand a pooled CLI sandbox to the CLI sandbox `owner` (`cli-…`, holding no lease): None on a miss (or with
        no `cli:N` pool). Returns it with the home directory bound into it, where the caller moves the person's
        home (hearth/clisandbox/homes.py). Raises HearthError as `claim`."""
        if CLI not in self.sizes:
            return None
        sb = await self._hand_out(owner, CLI, self.cli_digests(), OwnerKind.CLI)
        if sb is None:
            return None
        assert sb.spec.home is not None  # a pooled CLI sandbox is always started with a home of its own
        return sb, sb.spec.home

    @property
    def claiming(self) -> asyncio.Lock:
        """Held while a hand-out is decided (a claim in the store, or a retire): see `candidates`."""
        return self._claiming

    def candidates(self, mode: str) -> list[str]:
        """The pooled owners a session of `mode` may be handed, oldest first (none with the pool off or no such
        mode): for a session's admission, which claims one in its own transaction (hearth/session/admission.py
        `admit_pooled`) while the caller holds `claiming`, then calls `taken`."""
        return [sb.owner for sb in self.ready(mode)] if mode in self.sizes else []

    def taken(self, pooled: str, sid: str, secret: str, providers: tuple[str, ...]) -> Claimed:
        """The pooled sandbox `pooled`, claimed in the store for session `sid` with the agent secret `secret`, runs
        for `sid` from now on in this controller's memory too (call it at once, holding `claiming`); personalise
        it with `personalise`, then call `refill` (not started here: a refill's boot would compete with the
        hand-over for the CPU and the store). Raises HearthError if it is no longer live here."""
        live = self.mgr.get(pooled)
        if live is None:
            raise HearthError(Hop.DRIVER, "the warm-pool sandbox ended while it was handed out", "retry")
        pool_agent = live.agent()
        # (The manager's in-memory half of SandboxManager.claim: the store's half ran in the admission.)
        sb = self.mgr.hand_over(
            pooled, sid, OwnerKind.SESSION, secret, providers
        )  # manager.py is h1's: no public name yet
        self.counted(pooled, refill=False)
        return Claimed(sb, pooled, pool_agent)

    def counted(self, pooled: str, refill: bool = True) -> None:
        """A hand-out of `pooled` happened: its idle age goes, the hit is counted and (unless the caller starts it
        later) a refill replaces it."""
        self._since.pop(pooled, None)
        self.hits += 1
        if refill:
            self.refill()

    async def _hand_out(self, sid: str, mode: str, providers: tuple[str, ...], kind: OwnerKind) -> Sandbox | None:
        async with self._claiming:
            candidates = [sb.owner for sb in self.ready(mode)]
            claimed = await self.mgr.claim(candidates, sid, kind, providers) if candidates else None
            if claimed is None:
                self.missed()
                return None
        self.counted(claimed.pooled)
        return await self.personalise(claimed, sid, mode, providers)

    def handed_over(self, sid: str, awaits_viewer: bool) -> None:
        """The hand-over to `sid` is over: its replacement boots now — or, when the session now waits for its first
        viewer (a desktop that became ready), once that viewer has its first frame whole (`framed`: it asked for the
        next update, or left) or REFILL_GRACE later, whichever comes first: a refill's boot takes the CPU that first
        frame needs."""
        if not awaits_viewer:
            self.refill()
            return
        stale = self._grace.pop(sid, None)
        if stale is not None:
            stale.cancel()
        self._grace[sid] = asyncio.get_running_loop().call_later(REFILL_GRACE, self.framed, sid)

    def framed(self, sid: str) -> None:
        """A viewer of `sid` has its first frame (or the grace ran out): a refill its hand-over held back starts."""
        handle = self._grace.pop(sid, None)
        if handle is not None:
            handle.cancel()
            self.refill()

    def missed(self) -> None:
        self.misses += 1
        self.refill()

    async def personalise(self, claimed: Claimed, sid: str, mode: str, providers: tuple[str, ...]) -> Sandbox:
        """Give the claimed sandbox's agent its new identity (with the pool's secret, which it refuses from then
        on). Raises HearthError when it does not take it (the sandbox is then ended)."""
        sb, owner = claimed.sandbox, claimed.pooled
        try:
            await claimed.pool_agent.call(
                "POST",
                routes.PERSONALISE,
                personalise_body(Identity(sb.secret, sid, tuple(providers))),  # replaces the agent's identity whole
                timeout=PERSONALISE_TIMEOUT,
            )
        except Exception as exc:
            log.warning("pooled sandbox not personalised: %s", type(exc).__name__, extra={"session_id": sid})
            await sb.end(Final.DONE)
            if sb.spec.home is not None and mode == CLI:
                await asyncio.to_thread(shutil.rmtree, sb.spec.home.parent, True)
            raise HearthError(
                Hop.AGENT,
                "the warm-pool sandbox did not accept its new configuration",
                "retry; if it repeats set HEARTH_POOL_SIZE= (off) and see the controller log",
            ) from exc
        log.info("handed out a pooled sandbox", extra={"session_id": sid, "pool_owner": owner})
        return sb

    # ---- shutdown ----------------------------------------------------------------------------------------------
    async def drain(self, end: bool = True) -> int:
        """Stop refilling (the boots in flight are undone) and, with `end`, end every pooled sandbox (`hearth serve
        --drain`; without: they keep running for the next controller to adopt); returns how many were ended."""
        self.sizes = {}
        for handle in self._grace.values():
            handle.cancel()
        self._grace.clear()
        tasks = [t for _, t in self._filling.values() if not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        n = 0
        pooled = [sb for sb in map(self.mgr.get, self.mgr.owners()) if sb and sb.owner_kind is OwnerKind.POOL]
        for sb in pooled if end else []:
            if sb.state is SandboxState.POOLED and await self._retire(sb.owner):
                n += 1
        return n
