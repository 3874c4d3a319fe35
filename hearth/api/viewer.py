"""The page a person signs in on, its live status channel (server-sent events) and the code a person pastes back,
authorised by the viewer token (the code also by an API key).

The status carries what the page says in plain words: the mode, the provider's name and — in direct mode — the
sign-in link, the device code and whether the CLI waits for a pasted code (with the CLI's own message).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.api.ports import Queue, Watching
from hearth.config import Settings
from hearth.errors import StoreError
from hearth.gateway.embed import frame_ancestors
from hearth.gateway.qr import qr_svg
from hearth.gateway.tokens.base import Scope, TokenError, TokenStore
from hearth.session.owner import NotHere
from hearth.session.view import SessionNotFound, SessionView
from hearth.signin import returnto, wording
from hearth.signin.flow import SignInFlow
from hearth.signin.modes import SigninMode
from hearth.signin.prompts import SigninPrompt
from hearth_agent.contract.signin import CodeRefused

STATIC = Path(__file__).resolve().parent.parent / "static"
# What each route can answer (the OpenAPI is the contract): the page's own refusals are HTML, the status stream's
# are events; the limits middleware's and the handlers' are JSON.
_TOKEN = "missing, invalid or expired viewer token (`?token=`)"
_CODE = problems.declare(400, 401, 403, 404, 409, 421, 502, 503, _401=_TOKEN + ", and no valid API key")
_PAGE = problems.also("text/html", problems.declare(401, 404, 421, 503, _401=_TOKEN), 200, 401, 421, 503)
_STATUS = problems.also("text/event-stream", problems.declare(401, 404, 421, 503, _401=_TOKEN), 200, 401, 404)


def status_json(
    view: SessionView,
    provider_name: str | None = None,
    prompt: SigninPrompt | None = None,
    watching: bool = False,
    return_url: str | None = None,
    queue_position: int | None = None,
    qr: str | None = None,
) -> str:
    """One status event. What the page shows comes from hearth/signin/wording.py (`headline`, `message`, `step`,
    `button`); the raw state, reason and timings are for its Details only. `qr`: the link's QR code (`qr_for`)."""
    said = wording.for_session(view, provider_name, prompt, watching=watching, queue_position=queue_position)
    account = wording.account_name(view.provider, provider_name) if view.provider else None
    step = wording.step_for(view.status, mode=view.mode.value, has_link=prompt is not None, watching=watching)
    return json.dumps(
        {
            "status": view.status.value,
            # a live session's reason may name the sign-in page (url_captured: scheme://host/path): not for watchers
            "reason": view.reason if not watching or view.status.terminal else None,
            "hop": view.hop,
            "timings": view.timings,
            "mode": view.mode.value,
            "provider": view.provider,
            "provider_name": provider_name,
            "account": account,
            "step": step.value if step is not None else None,
            "headline": said.headline,
            "message": said.message,
            "next_step": said.next_step,
            "button": wording.open_button(account) if account else None,
            "signin": prompt.public() if prompt is not None else None,
            "qr": qr,
            "return_url": return_url,
            "watching": watching,  # a view-only token: no sign-in link or code, no input
        },
        separators=(",", ":"),
    )


async def qr_for(view: SessionView, prompt: SigninPrompt | None) -> str | None:
    """The QR code of a direct sign-in's link, drawn off the event loop (≈0.1 s of CPU for a long OAuth link; cached
    per link)."""
    if prompt is None or view.mode is not SigninMode.DIRECT:
        return None
    return await asyncio.to_thread(qr_svg, prompt.url)


def page_config(settings: Settings) -> str:
    """The page's fixed words and the origins it may post its status to, as JSON safe inside a <script> element."""
    config = {
        "ui": wording.UI,
        "steps": [{"id": step.value, "label": label} for step, label in wording.STEP_LABELS.items()],
        "embed_origins": list(settings.embed_origins),
    }
    return json.dumps(config, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def page_headers(settings: Settings) -> dict[str, str]:
    """Only hearth and HEARTH_EMBED_ORIGINS may frame the page; it sends no Referer (its URL holds the token)."""
    return {
        "Content-Security-Policy": frame_ancestors(settings.embed_origins),
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def make_router(
    records: Watching,
    queue: Queue,
    tokens: TokenStore,
    signin: SignInFlow,
    keys: ApiKeys,
    keepalive: float = 15.0,
) -> APIRouter:
    router = APIRouter(tags=["viewer"])

    def provider_name(view: SessionView) -> str | None:
        p = signin.providers.get(view.provider or "")
        return p.display_name if p is not None else None

    @router.post("/api/auth/session/{session_id}/code", responses=_CODE)
    async def code(session_id: str, request: Request, token: str = "") -> JSONResponse:
        """The code the person pasted (paste-code flows of direct mode), typed into the CLI by the agent.
        Authorised by a control viewer token (`?token=`) or an API key; control characters or more than 512
        characters → 400 before anything is sent; 409 when the CLI is not waiting for a code."""
        if token:
            try:
                claims = tokens.verify(token, session_id)
            except TokenError as exc:
                return JSONResponse({"error": f"unauthorized: {exc}"}, status_code=401)
            if claims.scope is not Scope.CONTROL:
                return JSONResponse({"error": "a view-only link cannot submit a code"}, status_code=403)
        elif not keys.admits(request):  # an API key, or the node credential of an edge that checked one
            return JSONResponse({"error": "send a viewer token (?token=) or an API key"}, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            body = None
        await records.owned(session_id, "code")  # another node's session: 421 naming it (hearth/session/owner.py)
        try:
            await signin.submit_code(session_id, body.get("code") if isinstance(body, dict) else None)
        except CodeRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse({"sent": True})

    @router.get("/api/auth/session/{session_id}/novnc", responses=_PAGE)  # HTML (see _PAGE); errors also JSON
    async def page(session_id: str, token: str = "") -> HTMLResponse:
        """The noVNC viewer page (served by hearth; no CDN)."""
        headers = page_headers(records.settings)
        try:
            tokens.verify(token, session_id)
        except TokenError as exc:
            body = _plain("This link is not valid", f"{exc}. Ask for a new link.")
            return HTMLResponse(body, status_code=401, headers=headers)
        try:
            await records.owned(session_id, "page")  # another node's session: 421 naming it (a token of old)
        except NotHere as exc:
            body = _plain("This sign-in is on another server", exc.short)
            return HTMLResponse(body, status_code=421, headers=headers)
        except (SessionNotFound, StoreError):
            pass  # the page's own status stream and WebSocket say so, in the person's words
        if not (STATIC / "novnc" / "core" / "rfb.js").is_file():
            body = _plain("Viewer not installed", "run scripts/setup.sh to build noVNC")
            return HTMLResponse(body, status_code=503, headers=headers)
        html = (
            (STATIC / "viewer" / "viewer.html").read_text().replace("{{HEARTH_CONFIG}}", page_config(records.settings))
        )
        return HTMLResponse(html, headers=headers)

    @router.get("/api/auth/session/{session_id}/status", response_class=StreamingResponse, responses=_STATUS)
    async def status(session_id: str, token: str = "") -> StreamingResponse:
        """Server-sent events: one `data:` line with the session's status on every change, until it ends. The
        sign-in link and code (direct mode) go to control tokens only: whoever has them can complete the sign-in."""
        try:
            claims = tokens.verify(token, session_id)
        except TokenError as exc:
            return StreamingResponse(
                iter([f"event: error\ndata: {json.dumps(str(exc))}\n\n"]),
                status_code=401,
                media_type="text/event-stream",
            )
        try:
            await records.owned(session_id, "status")  # another node's session: 421 naming it (a token of old)
        except SessionNotFound:
            return StreamingResponse(
                iter(['event: error\ndata: "unknown session"\n\n']), status_code=404, media_type="text/event-stream"
            )

        # An open sign-in page is activity (a direct-mode session has no viewer WebSocket to count): a heartbeat at
        # every keepalive, often enough for HEARTH_IDLE_TIMEOUT.
        beat = min(keepalive, records.settings.idle_timeout / 3)

        try:
            back = await returnto.return_url(records.db, session_id)
        except StoreError:
            back = None  # the store answered a moment ago; without it the page only offers no way back

        async def events() -> AsyncIterator[str]:
            last = ""
            await records.heartbeat(session_id)
            while True:
                waiter = records.changes.waiter(session_id)
                try:
                    view = await records.get(session_id)
                except StoreError:  # the store is down: keep the stream, ask again after the keepalive
                    yield ": store unavailable\n\n"
                    await asyncio.sleep(keepalive)
                    continue
                watching = claims.scope is not Scope.CONTROL
                prompt = None if watching else signin.prompt(session_id)
                position = queue.position(session_id)
                qr = await qr_for(view, prompt)
                now = status_json(view, provider_name(view), prompt, watching, back, position, qr)
                if now != last:
                    yield f"data: {now}\n\n"
                    last = now
                if view.status.terminal:
                    return
                try:
                    await asyncio.wait_for(waiter.wait(), beat)
                except TimeoutError:
                    await records.heartbeat(session_id)
                    yield ": keepalive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return router


def _plain(title: str, detail: str) -> str:
    from html import escape

    return (
        f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
        f"<body style='font:16px system-ui;padding:3em'><h1>{escape(title)}</h1><p>{escape(detail)}</p>"
    )
