"""The application factory: wires config, store, fabric, driver, session service, gateway and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from hearth import __version__
from hearth.api import diagnostics, health, limits, problems, sessions, users
from hearth.api import egress as egress_routes
from hearth.api import webhooks as webhook_routes
from hearth.api.auth import ApiKeys
from hearth.clisandbox import retention as cli_retention
from hearth.clisandbox.manager import Elsewhere
from hearth.cluster.beat import run_node
from hearth.cluster.credential import NodeCredential
from hearth.doctor import install as install_doctor
from hearth.errors import HearthError, StoreError
from hearth.gateway import routes as gateway_routes
from hearth.gateway import viewer
from hearth.observe.listener import serve_metrics
from hearth.prompts import api as prompt_routes
from hearth.prompts.service import PromptService
from hearth.prompts.store import PromptStore
from hearth.session.admission import LimitExceeded
from hearth.session.owner import NotHere
from hearth.session.service import SessionNotFound
from hearth.session.states import IllegalTransition
from hearth.signin import callbacks as agent_callbacks
from hearth.webhooks.sender import run_sender

if TYPE_CHECKING:
    from hearth.controller import Controller

log = logging.getLogger("hearth.api")
RETRY_AFTER = 5  # seconds, on 503 for an unavailable store


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
        from hearth.controller import housekeeping  # step 1 of the move: create_app gets its lifespan passed in next

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
