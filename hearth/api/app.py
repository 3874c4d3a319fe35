"""The application factory: wires config, store, fabric, driver, session service, gateway and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select

from hearth import __version__
from hearth.agentlink import callbacks as agent_callbacks
from hearth.api import diagnostics, health, limits, problems, sessions, users
from hearth.api import egress as egress_routes
from hearth.api import webhooks as webhook_routes
from hearth.api.auth import ApiKeys
from hearth.clisandbox import retention as cli_retention
from hearth.clisandbox.manager import CliSandboxes, Elsewhere
from hearth.cluster.beat import run_node
from hearth.cluster.credential import NodeCredential
from hearth.config import Settings
from hearth.doctor import install as install_doctor
from hearth.egress.runtime import EgressRuntime
from hearth.errors import HearthError, Hop, StoreError
from hearth.fabric.fabric import Fabric
from hearth.fabric.ipam import Ipam
from hearth.gateway import routes as gateway_routes
from hearth.gateway import viewer
from hearth.gateway.tokens.signed import SignedTokens, load_or_create_key, parse_ring
from hearth.lifecycle.manager import SandboxManager
from hearth.observe.listener import serve_metrics
from hearth.prompts import api as prompt_routes
from hearth.prompts.service import PromptService
from hearth.prompts.store import PromptStore
from hearth.providers.model import Provider
from hearth.providers.registry import load as load_providers
from hearth.reconcile.reconciler import Reconciler
from hearth.sandbox.base import Driver
from hearth.sandbox.netns import NetnsDriver
from hearth.sandbox.select import choose_driver
from hearth.session.admission import LimitExceeded
from hearth.session.owner import NotHere
from hearth.session.service import SessionNotFound, SessionService
from hearth.session.signin import SignInFlow
from hearth.session.states import IllegalTransition
from hearth.store.db import Database
from hearth.store.models import CredentialRow, SessionRow
from hearth.vault.keys import KeyRing
from hearth.vault.store import Vault
from hearth.webhooks.outbox import Outbox
from hearth.webhooks.sender import run_sender

log = logging.getLogger("hearth.api")
RETRY_AFTER = 5  # seconds, on 503 for an unavailable store


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


async def _housekeeping(ctl: Controller, period: float = 2.0) -> None:
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


def create_app(ctl: Controller) -> FastAPI:
    settings = ctl.settings
    # callers present an API key; edges present the node credential instead (hearth/cluster/credential.py)
    keys = ApiKeys(settings.api_keys, NodeCredential.from_setting(settings.node_credential))
    store = PromptStore(settings, ctl.db, ctl.vault.ring)
    prompts = ctl.prompts = PromptService(settings, store, ctl.vault, ctl.clis, ctl.providers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        scrape = (
            await serve_metrics(settings.metrics_listen, ctl.service.metrics.render)
            if settings.metrics_listen
            else None
        )
        try:
            await ctl.fabric.up()
            if ctl.egress is not None:
                await ctl.egress.start()
            callbacks = await agent_callbacks.serve(settings, ctl.signin, prompts=prompts)
        except BaseException:
            if scrape is not None:
                scrape.close()
            raise
        keeper = asyncio.create_task(_housekeeping(ctl), name="housekeeping")
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
            await prompts.close()
            await ctl.close()
            await callbacks.close()
            if ctl.egress is not None:
                await ctl.egress.stop()
            if scrape is not None:
                scrape.close()

    app = FastAPI(title="hearth", version=__version__, lifespan=lifespan)
    limits.install(app, settings)  # request size limit, strict JSON bodies and per-client rate limiting on /api/*
    problems.install(app)  # 422 and HTTPException answers: ErrorOut-shaped bodies that always render
    app.state.controller = ctl

    @app.exception_handler(HearthError)
    async def hearth_error(_r: Request, exc: HearthError) -> JSONResponse:
        body = {"error": exc.reason, "hop": exc.hop.value, "hint": exc.hint}
        if isinstance(exc, StoreError):
            return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER)})
        return JSONResponse(body, status_code=problems.status_for(exc))  # a ConfigError: 500 naming config

    @app.exception_handler(Exception)
    async def internal(_r: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)  # the details stay in the log; never in a user-facing reason
        return JSONResponse(
            {"error": "[controller] internal error; the controller log has the details", "hop": "controller"},
            status_code=500,
        )

    @app.exception_handler(NotHere)
    async def not_here(_r: Request, exc: NotHere) -> JSONResponse:
        """Another node's session (logged where refused): 421, naming the node that holds it."""
        return JSONResponse({"error": exc.reason, "hop": exc.hop.value, "node": exc.node_id}, status_code=421)

    @app.exception_handler(Elsewhere)
    async def elsewhere(_r: Request, exc: Elsewhere) -> JSONResponse:
        """Another node's CLI sandbox: 421, naming the node that holds it."""
        where = {"owner_node": exc.node_id, "this_node": settings.node_id}
        log.warning("refused: the CLI sandbox lives on another node", extra=where)
        body = {"error": exc.reason, "hop": exc.hop.value, "hint": exc.hint, "node": exc.node_id}
        return JSONResponse(body, status_code=421)

    @app.exception_handler(SessionNotFound)
    async def not_found(_r: Request, exc: SessionNotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(LimitExceeded)
    async def limited(_r: Request, exc: LimitExceeded) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers={"Retry-After": "5"})

    @app.exception_handler(IllegalTransition)
    async def conflict(_r: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    install_doctor(ctl)  # failure reasons and 4502 closes carry the doctor's first failing hop
    ctl.service.metrics.track_state(ctl.service.counts_by_state, ctl.service.pool_usage)

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=[Depends(keys)],
        responses=problems.also("text/plain", problems.declare(401, api=False), 200),  # the text; errors: JSON
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics, with an API key (`Authorization: Bearer`); without one on HEARTH_METRICS_LISTEN."""
        body = await asyncio.to_thread(ctl.service.metrics.render)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    app.include_router(health.make_router(ctl))
    app.include_router(sessions.make_router(settings, ctl.service, ctl.tokens, keys, ctl.providers, ctl.signin.prompt))
    app.include_router(users.make_router(ctl.vault, ctl.clis, keys))
    app.include_router(prompt_routes.make_router(prompts, keys))
    app.include_router(cli_retention.make_router(ctl.clis, keys))
    app.include_router(egress_routes.make_router(settings, ctl.db, keys))
    app.include_router(webhook_routes.make_router(ctl.db, keys, bool(settings.webhook_url)))
    app.include_router(diagnostics.make_router(ctl, keys))
    app.include_router(gateway_routes.make_router(settings, ctl.service, ctl.tokens))
    app.include_router(viewer.make_router(ctl.service, ctl.tokens, ctl.signin, keys))
    app.mount("/static", StaticFiles(directory=viewer.STATIC, check_dir=False), name="static")
    return app
