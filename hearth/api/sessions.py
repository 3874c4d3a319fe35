"""Session routes: start, status, cancel, heartbeat, timeline, new viewer token.

Every route on a session acts only on a session of this node (hearth/session/owner.py): another node's session is
refused with 421, the body naming the owning node (`node`) and its address; the refusal is logged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.api.schemas import SessionOut, StartRequest, StartResponse, TokenRequest, TokenResponse
from hearth.config import Settings
from hearth.gateway.embed import ReturnUrlError, check_return_url
from hearth.gateway.tokens.base import Scope, TokenStore
from hearth.providers.model import Provider
from hearth.session.boots import SessionBoots
from hearth.session.records import SessionRecords
from hearth.session.service import SessionService
from hearth.signin.modes import ModeError, choose_mode
from hearth.signin.prompts import SigninPrompt

_ERRORS: dict[int | str, dict[str, Any]] = problems.declare(401, 404, 409, 421, 502, 503)


def viewer_url(settings: Settings, request: Request, session_id: str, token: str) -> str:
    base = settings.public_url.rstrip("/") if settings.public_url else str(request.base_url).rstrip("/")
    return f"{base}/api/auth/session/{session_id}/novnc?token={quote(token)}"


def make_router(
    settings: Settings,
    service: SessionService,
    records: SessionRecords,
    boots: SessionBoots,
    tokens: TokenStore,
    keys: ApiKeys,
    providers: dict[str, Provider],
    prompt_of: Callable[[str], SigninPrompt | None],
) -> APIRouter:
    router = APIRouter(prefix="/api/auth", dependencies=[Depends(keys)], tags=["sessions"], responses=_ERRORS)

    @router.post(
        "/start",
        response_model=StartResponse,
        status_code=201,
        responses=problems.declare(
            400, 429, 503, _400="the provider cannot sign in in the requested mode (the reason says which it can)"
        ),
    )
    async def start(body: StartRequest, request: Request) -> StartResponse:
        """Create a session; its sandbox boots in the background (poll or follow its status).

        With a `provider`, the session runs that CLI's sign-in and delivers the credentials to the user's CLI
        sandbox: ready → awaiting_user → credentials_captured → delivered → completed. `mode` (default
        HEARTH_SIGNIN_MODE): `remote_browser` — a desktop whose browser the person uses through the viewer;
        `direct` — no desktop; the person opens `signin.url` in their own browser (400 when the provider cannot)."""
        if body.provider is not None and body.provider not in providers:
            raise HTTPException(422, f"unknown provider {body.provider!r}; known: {', '.join(sorted(providers))}")
        try:
            mode = choose_mode(settings.signin_mode, providers[body.provider] if body.provider else None, body.mode)
        except ModeError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            back = check_return_url(body.return_url, settings.embed_origins) if body.return_url else None
        except ReturnUrlError as exc:
            raise HTTPException(400, str(exc)) from None
        view = await service.start(body.user_id, body.provider, mode, back)
        token = tokens.issue(view.id, Scope.CONTROL, settings.token_ttl)
        return StartResponse(
            session_id=view.id,
            status=view.status.value,
            queue_position=service.boot_queue.position(view.id),
            viewer_token=token,
            viewer_url=viewer_url(settings, request, view.id, token),
        )

    @router.get("/session/{session_id}", response_model=SessionOut)
    async def get(session_id: str) -> SessionOut:
        """Status, reason, timings; in direct mode `signin` holds the link (and code) to show the person."""
        return SessionOut.of(
            await records.owned(session_id, "get"), prompt_of(session_id), service.boot_queue.position(session_id)
        )

    @router.post("/session/{session_id}/cancel", response_model=SessionOut)
    async def cancel(session_id: str) -> SessionOut:
        """End the session and remove its sandbox (ending an ended session is a no-op)."""
        return SessionOut.of(await service.cancel(session_id))

    @router.delete("/session/{session_id}", response_model=SessionOut)
    async def delete(session_id: str) -> SessionOut:
        """The same as `POST …/cancel`, for clients that delete resources."""
        return SessionOut.of(await service.cancel(session_id))

    @router.post("/session/{session_id}/heartbeat", response_model=SessionOut)
    async def heartbeat(session_id: str) -> SessionOut:
        """Keep a ready session from idling out."""
        return SessionOut.of(await records.heartbeat(session_id))

    @router.get("/session/{session_id}/events")
    async def events(session_id: str) -> list[dict[str, Any]]:
        """Every state change and boot stage, with timestamps and reasons."""
        return await records.events(session_id)

    @router.get("/session/{session_id}/console")
    async def console(session_id: str, limit: int = 8192) -> dict[str, Any]:
        """The tail of the guest's serial console (VM drivers), while the sandbox exists (or is kept on failure)."""
        view = await records.owned(session_id, "console")
        if not service.driver.offers.console_tail or view.slot is None:
            raise HTTPException(404, f"the {service.driver.name} driver has no guest console")
        spec = boots.sandbox_spec(view)  # by session and node, never by slot index alone
        text = await asyncio.to_thread(service.driver.console_tail, spec, max(256, min(limit, 1 << 20)))
        return {"driver": service.driver.name, "console": text}

    @router.post("/session/{session_id}/token", response_model=TokenResponse)
    async def token(session_id: str, body: TokenRequest, request: Request) -> TokenResponse:
        """A fresh viewer token (`view` hides input, `control` allows it)."""
        await records.owned(session_id, "token")
        scope = Scope(body.scope)
        tok = tokens.issue(session_id, scope, settings.token_ttl)
        return TokenResponse(
            viewer_token=tok, viewer_url=viewer_url(settings, request, session_id, tok), scope=scope.value
        )

    return router
