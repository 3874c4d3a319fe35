"""The composition root: `build` makes one controller (config, store, fabric, driver, session service, sign-in,
prompts, doctor) by passing each part into the next; `make_app` hands its routes and its lifespan (listeners,
housekeeping, heartbeat, webhooks) to `hearth.api.app.create_app`. Nothing below this module imports it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI
from sqlalchemy import func, select

from hearth.api import diagnostics, health, sessions, users, viewer
from hearth.api import egress as egress_routes
from hearth.api import prompts as prompt_routes
from hearth.api import retention as cli_retention
from hearth.api import webhooks as webhook_routes
from hearth.api.app import create_app, metrics_router
from hearth.api.auth import ApiKeys
from hearth.clisandbox.manager import CliSandboxes
from hearth.cluster.beat import run_node
from hearth.cluster.credential import NodeCredential
from hearth.config import Settings
from hearth.doctor import Parts, verdict
from hearth.doctor.context import local_api_url
from hearth.egress.runtime import EgressRuntime
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.fabric import Fabric
from hearth.fabric.ipam import Ipam
from hearth.gateway import routes as gateway_routes
from hearth.gateway.gauge import ViewerGauge
from hearth.gateway.tokens.signed import SignedTokens, load_or_create_key, parse_ring
from hearth.lifecycle.manager import SandboxManager
from hearth.observe.listener import serve_metrics
from hearth.prompts.service import PromptService
from hearth.prompts.store import PromptStore
from hearth.providers.model import Provider
from hearth.providers.registry import load as load_providers
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.base import Driver
from hearth.sandbox.netns import NetnsDriver
from hearth.sandbox.select import choose_driver
from hearth.session.service import SessionService
from hearth.signin import callbacks as agent_callbacks
from hearth.signin.codes import SessionCodes
from hearth.signin.flow import SignInFlow
from hearth.store.db import Database
from hearth.store.models import CredentialRow, SessionRow
from hearth.vault.keys import KeyRing
from hearth.vault.store import Vault
from hearth.webhooks.outbox import Outbox
from hearth.webhooks.sender import run_sender

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
    prompts: PromptService  # hearth/prompts
    egress: EgressRuntime  # hearth/egress: the gate and the DNS forwarder (started with the fabric)
    doctor: Parts  # what this node's diagnoses work with (hearth/doctor)
    viewers: ViewerGauge  # connected viewers per session (hearth/gateway/gauge.py)
    reconcile_soon: asyncio.Event = field(default_factory=asyncio.Event)  # set when this node was marked down
    drain: bool = False  # `hearth serve --drain`: a stop ends every sandbox instead of leaving them to the next one

    async def close(self) -> None:
        """Close the store (its executor goes last). Sandboxes keep running for the next controller to adopt —
        unless draining: then every session is ended and every CLI sandbox stopped first."""
        await self.service.pool.standby.close()  # before the sandboxes end: no held connection waits for them
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


def build(settings: Settings, driver: Driver | None = None, *, drain: bool = False) -> Controller:
    """One controller over `settings` (`driver`: the sandbox driver, else the one HEARTH_DRIVER chooses; `drain`: a
    stop ends every sandbox — `hearth serve --drain` — instead of leaving them for the next controller)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url, settings.data_dir)
    refuse_new_keys_over_old_store(settings, db)
    drv = driver or choose_driver(settings).driver
    ring = KeyRing.load(settings.master_key, settings.data_dir / "vault.keys")
    # CLI sandboxes need a persistent home: the main driver's when it offers one, else the namespace driver's.
    home_driver = None if drv.offers.persistent_home else NetnsDriver(settings)
    providers = load_providers()
    domains = {p.agent_digest(): tuple(p.egress_domains) for p in providers.values()}
    sandboxes = SandboxManager(settings, db, drv, Ipam(settings, db), ring, home_driver, egress_domains=domains)
    gauge = ViewerGauge()  # connected viewers: the gateway counts them, the session expiry reads them
    codes = SessionCodes(lambda: providers)  # each sign-in's codes: remembered by the sign-in, scrubbed by the records
    # The sign-in ends sessions through the service, and the doctor walks what the service holds, while the service
    # calls both back, and the warm pool's CLI sandboxes run what the CLI sandboxes allow: these hooks reach
    # `signin`, `doctor` and `clis`, made below, when they are called (never before).
    signin: SignInFlow
    doctor: Parts
    clis: CliSandboxes
    service = SessionService(
        settings,
        db,
        drv,
        sandboxes,
        providers=providers,
        viewers=gauge,
        codes=codes,
        diagnose=lambda session_id: verdict(doctor)(session_id),
        cli_digests=lambda: clis.prompt_digests(),  # HEARTH_POOL_SIZE=…,cli:N: pooled CLI sandboxes
        on_ready=[lambda view: signin.begin(view)],
        on_adopted=[lambda view: signin.resume(view)],
        on_terminal=[lambda view: signin.ended(view)],
    )
    key = (
        parse_ring(settings.token_secret)
        if settings.token_secret
        else load_or_create_key(settings.data_dir / "token.key")
    )
    vault = Vault(db, ring, Outbox(settings))  # seals, deliveries and revocations are webhook events too
    clis = CliSandboxes(settings, db, sandboxes, providers, pool=service.pool)
    records, boots = service.records, service.boots  # the sessions' rows; their boots (start, specs, explain)
    signin = SignInFlow(service, records, vault, clis, providers, codes)
    tokens = SignedTokens(key, node=settings.node_id)  # a viewer token names the node it was issued for
    prompts = PromptService(settings, PromptStore(settings, db, vault.ring), vault, clis, providers)
    egress = EgressRuntime(settings, sandboxes.gate)
    egress.register(service.metrics.registry)
    service.metrics.track_state(records.counts_by_state, records.pool_usage)
    doctor = Parts(
        settings,
        records=records,
        specs=boots,
        driver=drv,
        tokens=tokens,
        api_url=local_api_url(settings),
        pool=service.pool,
        gate=sandboxes.gate,
        metrics=service.metrics,
    )
    return Controller(
        settings,
        db,
        Fabric(settings),
        drv,
        service,
        tokens,
        vault,
        clis,
        providers,
        signin,
        prompts,
        egress,
        doctor,
        gauge,
        drain=drain,
    )


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
    reconciler = Reconciler(ctl.service, ctl.service.records, ctl.service.boots)
    next_reconcile = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            await ctl.service.records.record_pending()
            if loop.time() >= next_reconcile or ctl.reconcile_soon.is_set():
                ctl.reconcile_soon.clear()
                next_reconcile = loop.time() + ctl.settings.reconcile_interval
                await reconciler.run_once()
                if not ctl.prompts.adopted:  # after the sandboxes were adopted
                    await ctl.prompts.adopt()  # prompts that outlived the previous controller: attached, or ended
            await ctl.service.housekeeping.check_alive()
            await ctl.service.housekeeping.expire_due()
            await ctl.service.housekeeping.pool_tick()
            await ctl.clis.stop_idle()
            await ctl.prompts.check_sandboxes()  # a CLI sandbox that died mid-prompt: failed, naming it
            await ctl.prompts.store.purge()  # answers past HEARTH_PROMPT_RETENTION
            await ctl.clis.install_handed_over(ctl.vault)
        except StoreError as exc:
            log.warning("housekeeping pass skipped: %s", exc.reason)
        except Exception:
            log.exception("housekeeping pass failed")
        await asyncio.sleep(period)


@contextlib.asynccontextmanager
async def lifespan(ctl: Controller) -> AsyncIterator[None]:
    """What runs while the controller serves: the metrics listener, the fabric and egress, the agents' callback
    listener, housekeeping, the webhook sender and the node heartbeat; on the way out, all of it in reverse."""
    settings = ctl.settings
    scrape = (
        await serve_metrics(settings.metrics_listen, ctl.service.metrics.render) if settings.metrics_listen else None
    )
    try:
        if settings.dial_netns is not None:  # the loopback driver (tests) has no fabric namespace
            await ctl.fabric.up()
        await ctl.egress.start()
        callbacks = await agent_callbacks.serve(settings, ctl.signin, prompts=ctl.prompts)
    except BaseException:
        if scrape is not None:
            scrape.close()
        raise
    keeper = asyncio.create_task(housekeeping(ctl), name="housekeeping")
    webhooks = asyncio.create_task(run_sender(settings, ctl.db, ctl.service.metrics), name="webhooks")
    beat = asyncio.create_task(
        run_node(
            settings, ctl.db, ctl.service.ipam.size, (ctl.driver.name,), ctl.reconcile_soon.set, ctl.service.fence
        ),
        name="node-heartbeat",
    )
    try:
        yield
    finally:
        for task in (beat, keeper, webhooks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # The agents' callbacks first: a callback's handler cut short after the sessions were ended (a sign-in
        # that had just ended its session, its sandbox not yet torn down) would leave that sandbox behind; cut short
        # before, the drain below ends whatever it left (its sandbox row is still on record).
        await callbacks.close()
        await ctl.prompts.close()
        await ctl.close()
        await ctl.egress.stop()
        if scrape is not None:
            scrape.close()


def make_app(ctl: Controller) -> FastAPI:
    """The controller's HTTP app: its routes, in the order the OpenAPI lists them, and its lifespan."""
    settings, service = ctl.settings, ctl.service
    records, boots = service.records, service.boots
    # callers present an API key; edges present the node credential instead (hearth/cluster/credential.py)
    keys = ApiKeys(settings.api_keys, NodeCredential.from_setting(settings.node_credential))
    routers = [
        metrics_router(service.metrics.render, keys),
        health.make_router(settings, ctl.db, ctl.fabric, ctl.driver.name, lambda: len(service.live_sessions())),
        sessions.make_router(settings, service, records, boots, ctl.tokens, keys, ctl.providers, ctl.signin.prompt),
        users.make_router(ctl.vault, ctl.clis, keys),
        prompt_routes.make_router(ctl.prompts, keys),
        cli_retention.make_router(ctl.clis, keys),
        egress_routes.make_router(settings, ctl.db, keys),
        webhook_routes.make_router(ctl.db, keys, bool(settings.webhook_url)),
        diagnostics.make_router(ctl.doctor, records.owned, keys),
        gateway_routes.make_router(
            settings, service, records, boots, ctl.tokens, ctl.db, ctl.viewers, service.metrics, service.pool.standby
        ),
        viewer.make_router(records, service.boot_queue, ctl.tokens, ctl.signin, keys),
    ]
    app = create_app(settings, routers, lambda _app: lifespan(ctl), viewer.STATIC)
    app.state.controller = ctl  # hearth/serving/serve.py: a graceful stop closes viewers with 4503 first (its drain)
    return app
