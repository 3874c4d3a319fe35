"""One persistent CLI sandbox per user: created on demand, stopped when idle (its home is kept), resumed on use.

Credentials are installed through the sandbox's own agent (`POST /v1/files`, mode 0600) — never by mounting its
disk from the host. The sandbox itself (boot, secret, lease release, destroy, adoption after a controller restart)
belongs to the sandbox manager (hearth/lifecycle), with a driver that offers a persistent home; the owner id is
`cli-<hex>`, so the reconciler recognises it. With a warm pool of CLI sandboxes (HEARTH_POOL_SIZE=…,cli:N) a start
takes a pooled one and moves the person's home into it (hearth/clisandbox/homes.py); it goes back when it stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session as Db

from hearth.clisandbox.delivery import files_body
from hearth.clisandbox.homes import is_pooled_home, move_back, move_in
from hearth.config import Settings
from hearth.errors import HearthError, Hop
from hearth.lifecycle.manager import SandboxManager
from hearth.lifecycle.sandbox import Final, Kind, Sandbox
from hearth.providers.model import Provider
from hearth.providers.registry import load as load_providers
from hearth.store.db import Database
from hearth.store.models import CliSandboxRow, CredentialRow, OwnerKind, SessionRow, utcnow
from hearth.vault.keys import VaultKeyError
from hearth.vault.seal import SealError
from hearth.vault.store import CredentialFile, Vault
from hearth_agent.contract import routes

log = logging.getLogger("hearth.clisandbox")
OWNER_PREFIX = "cli-"
HANDOVER_BACKOFF_MAX = 300.0  # seconds between tries of a hand-over that keeps failing


class Elsewhere(HearthError):
    """The user's CLI sandbox lives on another node (its home is on that host's disk): only that node starts, stops
    or installs into it. A sign-in placed here hands its credentials over through the vault."""

    def __init__(self, node_id: str) -> None:
        super().__init__(
            Hop.NODE,
            f"this user's CLI sandbox lives on node {node_id}",
            f"send this to node {node_id}, which serves it (a sign-in placed elsewhere hands its credentials over "
            "through the vault)",
        )
        self.node_id = node_id


@dataclass(frozen=True)
class CliView:
    user_id: str
    state: str
    sandbox_ip: str | None
    created_at: datetime
    last_used_at: datetime
    node: str = "local"  # the node that runs it (CliSandboxRow.node_id)


def _view(r: CliSandboxRow) -> CliView:
    ip = r.sandbox_ip if r.state == "running" else None
    return CliView(r.user_id, r.state, ip, r.created_at, r.last_used_at, r.node_id)


def mark_stopped(db: Db, owner_id: str) -> None:
    """Record that the CLI sandbox of `owner_id` no longer runs (inside the caller's transaction)."""
    r = db.scalar(select(CliSandboxRow).where(CliSandboxRow.owner_id == owner_id))
    if r is not None:
        r.state, r.pid, r.sandbox_ip = "stopped", None, None


class PooledClis(Protocol):
    async def claim_cli(self, owner: str) -> tuple[Sandbox, Path] | None: ...


class CliSandboxes:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        sandboxes: SandboxManager,
        providers: dict[str, Provider] | None = None,
        pool: PooledClis | None = None,
    ) -> None:
        self.s = settings
        self.providers = load_providers() if providers is None else providers
        self.db = db
        self.sandboxes = sandboxes
        self.ipam = sandboxes.ipam
        self._locks: dict[str, asyncio.Lock] = {}
        self._backoff: dict[tuple[str, str], float] = {}  # (user, provider) → seconds until the next try
        self._retry_at: dict[tuple[str, str], float] = {}
        self.busy: Callable[[str], bool] = lambda _user: False  # a prompt runs there (hearth/prompts sets it)
        self._deliveries: dict[str, asyncio.Lock] = {}
        self.pool = pool  # the warm pool (hearth/session/pool.py) when HEARTH_POOL_SIZE has cli:N

    def prompt_digests(self) -> tuple[str, ...]:
        """The definitions a CLI sandbox's agent may run prompts with (hearth_agent/promptrun.py checks)."""
        return tuple(p.agent_digest() for p in self.providers.values() if p.prompt is not None)

    def home_of(self, user_id: str) -> Path:
        return self.s.data_dir / "users" / hashlib.sha256(user_id.encode()).hexdigest()[:24] / "home"

    def _lock(self, user_id: str) -> asyncio.Lock:
        return self._locks.setdefault(user_id, asyncio.Lock())

    def _sandbox(self, row: CliSandboxRow) -> Sandbox:
        sb = self.sandboxes.get(row.owner_id)
        if sb is None:
            raise HearthError(Hop.DRIVER, "the CLI sandbox is not running", "retry: it is started on use")
        return sb

    async def get(self, user_id: str) -> CliView | None:
        row = await self.db.run(lambda db: db.get(CliSandboxRow, user_id))
        return _view(row) if row else None

    async def ensure(self, user_id: str) -> CliSandboxRow:
        """The user's CLI sandbox, running (created or resumed as needed)."""
        async with self._lock(user_id):

            def load(db: Db) -> CliSandboxRow:
                row = db.get(CliSandboxRow, user_id)
                if row is None:
                    row = CliSandboxRow(
                        user_id=user_id,
                        node_id=self.s.node_id,  # its home lives on this host: placement's affinity
                        owner_id=OWNER_PREFIX + secrets.token_hex(8),
                        state="stopped",
                        home=str(self.home_of(user_id)),
                    )
                    db.add(row)
                    db.flush()
                return row

            row = await self.db.run(load)
            if row.node_id != self.s.node_id:  # never a second sandbox here, over another host's home
                raise Elsewhere(row.node_id)
            owner = row.owner_id
            running = self.sandboxes.get(owner)
            if row.state == "running" and running is not None and await running.alive():
                await self._touch(user_id)
                return row
            if row.state == "running" or self.sandboxes.get(owner) is not None:  # dead, or not adopted: replace it
                await self.sandboxes.end(owner, Final.DONE, row.slot, Kind.CLI)
            home = await self._settle_home(user_id)
            proxy = await self.sandboxes.egress.url_for_user(user_id)  # the user's port on the egress proxy ("": none)
            sb = await self._from_pool(user_id, owner, proxy)
            if sb is not None:
                home = sb.spec.home or home
            else:
                lease = await self.ipam.acquire(owner, OwnerKind.CLI)
                sb = await self.sandboxes.boot(
                    owner,
                    Kind.CLI,
                    lease.slot,
                    desktop=False,
                    home=home,
                    egress_proxy=proxy,
                    providers=self.prompt_digests(),
                )
            started = sb

            def save(db: Db) -> CliSandboxRow:
                r = db.get(CliSandboxRow, user_id)
                assert r is not None
                r.state, r.slot, r.sandbox_ip = "running", started.slot, str(started.spec.slot.ip)
                r.pid, r.last_used_at, r.home = started.pid, utcnow(), str(home)
                return r

            log.info("CLI sandbox started", extra={"user": user_id})
            return await self.db.run(save)

    async def _from_pool(self, user_id: str, owner: str, proxy: str) -> Sandbox | None:
        """A pooled CLI sandbox for `owner` with the person's home moved in (None: no pool, or none ready). The
        store names the pooled home as this user's before anything moves, so a crash mid-way is settled later."""
        if self.pool is None:
            return None
        got = await self.pool.claim_cli(owner)
        if got is None:
            return None
        sb, live = got
        try:

            def point(db: Db) -> None:
                r = db.get(CliSandboxRow, user_id)
                assert r is not None
                r.home = str(live)

            await self.db.run(point)
            await asyncio.to_thread(move_in, self.home_of(user_id), live)
            await self.sandboxes.hand_egress(owner, proxy)  # the user's port on the egress proxy
        except BaseException:
            await self.sandboxes.end(owner, Final.DONE, None, Kind.CLI)
            await self._settle_home(user_id)
            raise
        log.info("CLI sandbox handed out from the warm pool", extra={"user": user_id})
        return sb

    async def _settle_home(self, user_id: str) -> Path:
        """The person's home back where it belongs once its pooled sandbox stopped (hearth/clisandbox/homes.py);
        nothing to do when it already is. Call only while no sandbox of theirs runs. Returns their home."""
        row = await self.db.run(lambda db: db.get(CliSandboxRow, user_id))
        canonical = self.home_of(user_id)
        if row is None:
            return canonical
        if not is_pooled_home(self.s, Path(row.home)):
            return Path(row.home)
        await asyncio.to_thread(move_back, Path(row.home), canonical)

        def point(db: Db) -> None:
            r = db.get(CliSandboxRow, user_id)
            if r is not None:
                r.home = str(canonical)

        await self.db.run(point)
        log.info("CLI home moved back from its pooled sandbox", extra={"user": user_id})
        return canonical

    async def deliver(
        self, user_id: str, files: list[CredentialFile], provider: str = "", version: int | None = None
    ) -> list[str]:
        """Install `files` in the user's CLI sandbox through its agent, with the settings `provider`'s CLI needs to
        count as signed in merged into the person's own (hearth/clisandbox/delivery.py); returns the targets.
        With `version` (the sealed version these files are), a delivery never installs them over a newer one:
        deliveries to one user are serialised and an older version than the store's newest is skipped."""
        async with self._deliveries.setdefault(user_id, asyncio.Lock()):
            if version is not None and provider:
                newest = await self.db.run(
                    lambda db: db.scalar(
                        select(CredentialRow.version).where(
                            CredentialRow.user_id == user_id, CredentialRow.provider == provider
                        )
                    )
                )
                if newest is not None and newest > version:
                    log.info("older credential delivery skipped", extra={"user": user_id, "version": version})
                    return []
            return await self._deliver(user_id, files, provider)

    async def _deliver(self, user_id: str, files: list[CredentialFile], provider: str) -> list[str]:
        row = await self.ensure(user_id)
        out = (
            await self._sandbox(row)
            .agent()
            .call("POST", routes.FILES, files_body(files, self._provider(provider, files)))
        )
        await self._touch(user_id)
        installed = out.get("installed") if isinstance(out, dict) else None
        if not isinstance(installed, list):
            raise HearthError(Hop.AGENT, "CLI sandbox agent did not confirm the installed files", "see its agent log")
        return [str(t) for t in installed]

    def _provider(self, name: str, files: list[CredentialFile]) -> Provider | None:
        """The named provider, or the one whose credential files these are (each provider's targets are its own)."""
        if name:
            return self.providers.get(name)
        paths = {f.path for f in files}
        owners = [p for p in self.providers.values() if {f.target for f in p.credential_files} == paths]
        return owners[0] if len(owners) == 1 else None

    async def home_node(self, user_id: str) -> str | None:
        """The node where `user_id`'s CLI sandbox lives; None before its first start."""
        return await self.db.run(
            lambda db: db.scalar(select(CliSandboxRow.node_id).where(CliSandboxRow.user_id == user_id))
        )

    async def install_handed_over(self, vault: Vault) -> int:
        """Install the credentials that sign-ins on other nodes sealed for users whose CLI sandbox lives here (a
        sign-in placed elsewhere waits for this: hearth/signin/flow.py). Returns how many bundles were installed;
        a failure is logged and retried on a later pass, backing off."""
        mine = self.s.node_id

        def due(db: Db) -> list[tuple[str, str]]:
            rows = db.execute(
                select(CredentialRow.user_id, CredentialRow.provider, SessionRow.node_id)
                .join(CliSandboxRow, CliSandboxRow.user_id == CredentialRow.user_id)
                .join(SessionRow, SessionRow.id == CredentialRow.session_id)
                .where(CliSandboxRow.node_id == mine, CredentialRow.delivered_at.is_(None), SessionRow.node_id != mine)
            )
            return [(user, provider) for user, provider, _ in rows]

        now = asyncio.get_running_loop().time()
        installed = 0
        for user_id, provider in await self.db.run(due):
            key = (user_id, provider)
            if self._retry_at.get(key, 0.0) > now:
                continue
            why: str | None = None
            try:
                files = await vault.open(user_id, provider)
                if files is None:  # revoked meanwhile
                    continue
                await self.deliver(user_id, files, provider)
                await vault.mark_delivered(user_id, provider)
            except HearthError as exc:
                why = exc.reason
            except (SealError, VaultKeyError) as exc:
                why = f"this node cannot unseal them ({exc}); every node needs the same HEARTH_MASTER_KEY"
            if why is not None:
                wait = min(HANDOVER_BACKOFF_MAX, 2 * self._backoff.get(key, 1.0))
                self._backoff[key], self._retry_at[key] = wait, now + wait
                log.warning("handed-over credentials not installed: %s", why, extra={"user": user_id})
                continue
            self._backoff.pop(key, None)
            self._retry_at.pop(key, None)
            installed += 1
            log.info("handed-over credentials installed", extra={"user": user_id, "provider": provider})
        return installed

    async def remove(self, user_id: str, targets: list[str]) -> list[str]:
        """Delete `targets` (home-relative) from the user's CLI sandbox through its agent, resuming it if stopped;
        returns those that were there. A user without a CLI sandbox has nothing to remove."""
        if not targets or await self.get(user_id) is None:
            return []
        row = await self.ensure(user_id)
        out = await self._sandbox(row).agent().call("POST", routes.FILES_REMOVE, {"targets": targets})
        await self._touch(user_id)
        removed = out.get("removed") if isinstance(out, dict) else None
        if not isinstance(removed, list):
            raise HearthError(Hop.AGENT, "CLI sandbox agent did not confirm the removal", "see its agent log")
        return [str(t) for t in removed]

    async def stop(self, user_id: str) -> None:
        """Stop the processes and free the address; the home directory stays."""
        async with self._lock(user_id):
            row = await self.db.run(lambda db: db.get(CliSandboxRow, user_id))
            if row is not None and row.node_id != self.s.node_id:  # its slot number means another host's sandbox
                raise Elsewhere(row.node_id)
            if row is None or row.state != "running" or row.slot is None:
                pooled = row is not None and is_pooled_home(self.s, Path(row.home))
                if pooled and row is not None and self.sandboxes.get(row.owner_id) is None:
                    await self._settle_home(user_id)  # a stop a crash interrupted
                return
            await self.sandboxes.end(row.owner_id, Final.DONE, row.slot, Kind.CLI)
            await self.db.run(lambda db: mark_stopped(db, row.owner_id))
            await self._settle_home(user_id)

    async def delete(self, user_id: str) -> bool:
        """Stop it and remove its home for good."""
        first = await self.db.run(lambda db: db.get(CliSandboxRow, user_id))
        if first is None:
            return False  # checked first: an unknown id (any string a client sends) must not leave a lock behind
        if first.node_id != self.s.node_id:  # its home is on that host's disk
            raise Elsewhere(first.node_id)
        await self.stop(user_id)
        row = await self.db.run(lambda db: db.get(CliSandboxRow, user_id))
        if row is None:
            return False
        await asyncio.to_thread(shutil.rmtree, Path(row.home).parent, True)
        await self.db.run(lambda db: db.delete(db.get(CliSandboxRow, user_id)))
        return True

    async def stop_idle(self) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.s.cli_idle_timeout)
        rows = await self.db.run(
            lambda db: list(db.scalars(select(CliSandboxRow).where(CliSandboxRow.state == "running", self._mine())))
        )
        n = 0
        for r in rows:
            last = r.last_used_at if r.last_used_at.tzinfo else r.last_used_at.replace(tzinfo=UTC)
            if last < cutoff and not self.busy(r.user_id):
                await self.stop(r.user_id)
                n += 1
        return n

    async def running_users(self) -> list[str]:
        return await self.db.run(
            lambda db: list(
                db.scalars(select(CliSandboxRow.user_id).where(CliSandboxRow.state == "running", self._mine()))
            )
        )

    def _mine(self) -> ColumnElement[bool]:
        """This node's CLI sandboxes only: a node never stops another host's."""
        return CliSandboxRow.node_id == self.s.node_id

    async def owner_of(self, user_id: str) -> str | None:
        """The sandbox owner id of `user_id`'s CLI sandbox (who may push a prompt's events for that user)."""
        return await self.db.run(
            lambda db: db.scalar(select(CliSandboxRow.owner_id).where(CliSandboxRow.user_id == user_id))
        )

    async def touch(self, user_id: str) -> None:
        await self._touch(user_id)

    async def _touch(self, user_id: str) -> None:
        def touch(db: Db) -> None:
            r = db.get(CliSandboxRow, user_id)
            if r is not None:
                r.last_used_at = utcnow()

        await self.db.run(touch)
