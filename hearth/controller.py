"""The composition root: builds one controller (config, store, fabric, driver, session service, sign-in, gateway
pieces) by passing each part into the next, and runs its housekeeping. The HTTP app is made by `hearth.api.app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import func, select

from hearth.clisandbox.manager import CliSandboxes
from hearth.config import Settings
from hearth.egress.runtime import EgressRuntime
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.fabric import Fabric
from hearth.fabric.ipam import Ipam
from hearth.gateway.tokens.signed import SignedTokens, load_or_create_key, parse_ring
from hearth.lifecycle.manager import SandboxManager
from hearth.prompts.service import PromptService
from hearth.providers.model import Provider
from hearth.providers.registry import load as load_providers
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.base import Driver
from hearth.sandbox.netns import NetnsDriver
from hearth.sandbox.select import choose_driver
from hearth.session.service import SessionService
from hearth.signin.flow import SignInFlow
from hearth.store.db import Database
from hearth.store.models import CredentialRow, SessionRow
from hearth.vault.keys import KeyRing
from hearth.vault.store import Vault
from hearth.webhooks.outbox import Outbox

log = logging.getLogger("hearth.controller")


@dataclass
class Controller:
    """Everything one running controller holds; built by `build`, torn down by `close`."""

    settings: Settings
    db: Database
    fabric: Fabric
    driver: Driver
    service: SessionService
    tokens: SignedTokens
    vault: Vault
    clis: CliSandboxes
    providers: dict[str, Provider]
    signin: SignInFlow
    prompts: PromptService | None = None  # hearth/prompts: made by create_app
    reconcile_soon: asyncio.Event = field(default_factory=asyncio.Event)  # set when this node was marked down
    egress: EgressRuntime | None = None  # hearth/egress: the gate and the DNS forwarder (started with the fabric)
    drain: bool = False  # `hearth serve --drain`: a stop ends every sandbox instead of leaving them to the next one

    async def close(self) -> None:
        """Close the store (its executor goes last). Sandboxes keep running for the next controller to adopt —
        unless draining: then every session is ended and every CLI sandbox stopped first."""
        if self.drain:
            await self.service.shutdown()
            with contextlib.suppress(StoreError):
                for user in await self.clis.running_users():
                    with contextlib.suppress(Exception):
                        await self.clis.stop(user)
        else:
            self.service.drain()  # refuse new sessions, close viewers with 4503 (they reconnect to the next one)
            await self.service.stop_boots()
            log.info("controller stopping; sandboxes keep running", extra={"live": len(self.service.live_sessions())})
        self.db.dispose()


def build(settings: Settings, driver: Driver | None = None) -> Controller:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url, settings.data_dir)
    refuse_new_keys_over_old_store(settings, db)
    drv = driver or choose_driver(settings).driver
    ring = KeyRing.load(settings.master_key, settings.data_dir / "vault.keys")
    # CLI sandboxes need a persistent home: the main driver's when it offers one, else the namespace driver's.
    home_driver = None if drv.offers.persistent_home else NetnsDriver(settings)
    sandboxes = SandboxManager(settings, db, drv, Ipam(settings, db), ring, home_driver)
    service = SessionService(settings, db, drv, sandboxes=sandboxes)
    key = (
        parse_ring(settings.token_secret)
        if settings.token_secret
        else load_or_create_key(settings.data_dir / "token.key")
    )
    vault = Vault(db, ring, Outbox(settings))  # seals, deliveries and revocations are webhook events too
    clis = CliSandboxes(settings, db, sandboxes)
    service.pool.cli_digests = clis.prompt_digests  # HEARTH_POOL_SIZE=…,cli:N: pooled CLI sandboxes
    clis.pool = service.pool
    providers = load_providers()
    service.providers = providers
    sandboxes.egress_domains = {p.agent_digest(): tuple(p.egress_domains) for p in providers.values()}
    signin = SignInFlow(service, vault, clis, providers)
    tokens = SignedTokens(key, node=settings.node_id)  # a viewer token names the node it was issued for
    ctl = Controller(settings, db, Fabric(settings), drv, service, tokens, vault, clis, providers, signin)
    ctl.egress = EgressRuntime(settings, sandboxes.gate)
    ctl.egress.register(service.metrics.registry)
    return ctl


def refuse_new_keys_over_old_store(settings: Settings, db: Database) -> None:
    """A missing key file is generated only for an empty store: new keys over existing sessions or sealed
    credentials would silently invalidate every viewer token / make every credential unreadable."""
    token_file, vault_file = settings.data_dir / "token.key", settings.data_dir / "vault.keys"
    sessions_n, sealed_n = db.call(
        lambda s: (
            s.scalar(select(func.count()).select_from(SessionRow)) or 0,
            s.scalar(select(func.count()).select_from(CredentialRow)) or 0,
        )
    )
    missing = []
    if not settings.token_secret and not token_file.exists() and sessions_n:
        missing.append(f"{token_file} (the store holds {sessions_n} sessions)")
    if not settings.master_key and not vault_file.exists() and sealed_n:
        missing.append(f"{vault_file} (the store holds {sealed_n} sealed credentials)")
    if missing:
        raise HearthError(
            Hop.STORE,
            f"refusing to generate new keys over an existing store: missing {'; '.join(missing)}",
            "restore the key files from the data dir's backup (or set HEARTH_TOKEN_SECRET / HEARTH_MASTER_KEY); "
            "a wrong HEARTH_DATA_DIR or HEARTH_DATABASE_URL also shows this",
        )


async def housekeeping(ctl: Controller, period: float = 2.0) -> None:
    """Watchdog and expiry every `period`; the reconciler at once (in the background) and then periodically."""
    reconciler = Reconciler(ctl.service)
    next_reconcile = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            await ctl.service.record_pending()
            if loop.time() >= next_reconcile or ctl.reconcile_soon.is_set():
                ctl.reconcile_soon.clear()
                next_reconcile = loop.time() + ctl.settings.reconcile_interval
                await reconciler.run_once()
                if ctl.prompts is not None and not ctl.prompts.adopted:  # after the sandboxes were adopted
                    await ctl.prompts.adopt()  # prompts that outlived the previous controller: attached, or ended
            await ctl.service.check_alive()
            await ctl.service.expire_due()
            await ctl.service.pool_tick()
            await ctl.clis.stop_idle()
            if ctl.prompts is not None:
                await ctl.prompts.check_sandboxes()  # a CLI sandbox that died mid-prompt: failed, naming it
                await ctl.prompts.store.purge()  # answers past HEARTH_PROMPT_RETENTION
            await ctl.clis.install_handed_over(ctl.vault)
        except StoreError as exc:
            log.warning("housekeeping pass skipped: %s", exc.reason)
        except Exception:
            log.exception("housekeeping pass failed")
        await asyncio.sleep(period)
