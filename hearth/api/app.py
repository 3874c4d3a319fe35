"""The application factory, Starlette style: the routes and the lifespan are passed in (`hearth.controller.make_app`
passes them); this module adds what every route shares — limits, the error answers, the static files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from hearth import __version__
from hearth.api import limits, problems
from hearth.api.auth import ApiKeys
from hearth.clisandbox.manager import Elsewhere
from hearth.config import Settings
from hearth.errors import HearthError, StoreError
from hearth.session.admission import LimitExceeded
from hearth.session.owner import NotHere
from hearth.session.states import IllegalTransition
from hearth.session.view import SessionNotFound

log = logging.getLogger("hearth.api")
RETRY_AFTER = 5  # seconds, on 503 for an unavailable store

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
__all__ = ["Lifespan", "create_app", "metrics_router"]


def create_app(settings: Settings, routers: Sequence[APIRouter], lifespan: Lifespan, static: Path) -> FastAPI:
    """The app serving `routers` (in order), `static` at /static, with `lifespan` around serving."""
    app = FastAPI(title="hearth", version=__version__, lifespan=lifespan)
    limits.install(app, settings)  # request size limit, strict JSON bodies and per-client rate limiting on /api/*
    problems.install(app)  # 422 and HTTPException answers: ErrorOut-shaped bodies that always render
    _install_errors(app, settings)
    for router in routers:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")
    return app


def _install_errors(app: FastAPI, settings: Settings) -> None:
    """The domain's errors as HTTP answers: a store that is down 503, another node's session 421, …"""

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
        return JSONResponse({"error": str(exc)}, status_code=problems.status_for(exc), headers={"Retry-After": "5"})

    @app.exception_handler(IllegalTransition)
    async def conflict(_r: Request, exc: IllegalTransition) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)


def metrics_router(render: Callable[[], bytes], keys: ApiKeys) -> APIRouter:
    """`GET /metrics`: `render`'s Prometheus text, with an API key."""
    router = APIRouter()

    @router.get(
        "/metrics",
        tags=["health"],
        dependencies=[Depends(keys)],
        responses=problems.also("text/plain", problems.declare(401, api=False), 200),  # the text; errors: JSON
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics, with an API key (`Authorization: Bearer`); without one on HEARTH_METRICS_LISTEN."""
        body = await asyncio.to_thread(render)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    return router
