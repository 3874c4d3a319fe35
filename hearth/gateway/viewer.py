"""The viewer page and its live status channel (server-sent events), both authorised by the viewer token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, StreamingResponse

from hearth.errors import StoreError
from hearth.gateway.tokens.base import TokenError, TokenStore
from hearth.session.service import SessionNotFound, SessionService, SessionView

STATIC = Path(__file__).resolve().parent.parent / "static"


def status_json(view: SessionView) -> str:
    return json.dumps(
        {"status": view.status.value, "reason": view.reason, "hop": view.hop, "timings": view.timings},
        separators=(",", ":"),
    )


def make_router(service: SessionService, tokens: TokenStore, keepalive: float = 15.0) -> APIRouter:
    router = APIRouter(tags=["viewer"])

    @router.get("/api/auth/session/{session_id}/novnc", response_class=HTMLResponse)
    async def page(session_id: str, token: str = "") -> HTMLResponse:
        """The noVNC viewer page (served by hearth; no CDN)."""
        try:
            tokens.verify(token, session_id)
        except TokenError as exc:
            return HTMLResponse(_plain("This link is not valid", f"{exc}. Ask for a new link."), status_code=401)
        if not (STATIC / "novnc" / "core" / "rfb.js").is_file():
            return HTMLResponse(_plain("Viewer not installed", "run scripts/setup.sh to build noVNC"), status_code=503)
        return HTMLResponse((STATIC / "viewer" / "viewer.html").read_text())

    @router.get("/api/auth/session/{session_id}/status")
    async def status(session_id: str, token: str = "") -> StreamingResponse:
        """Server-sent events: one `data:` line with the session's status on every change, until it ends."""
        try:
            tokens.verify(token, session_id)
        except TokenError as exc:
            return StreamingResponse(
                iter([f"event: error\ndata: {json.dumps(str(exc))}\n\n"]),
                status_code=401,
                media_type="text/event-stream",
            )
        try:
            await service.get(session_id)
        except SessionNotFound:
            return StreamingResponse(
                iter(['event: error\ndata: "unknown session"\n\n']), status_code=404, media_type="text/event-stream"
            )

        async def events() -> AsyncIterator[str]:
            last = ""
            while True:
                waiter = service.changes.waiter(session_id)
                try:
                    view = await service.get(session_id)
                except StoreError:  # the store is down: keep the stream, ask again after the keepalive
                    yield ": store unavailable\n\n"
                    await asyncio.sleep(keepalive)
                    continue
                now = status_json(view)
                if now != last:
                    yield f"data: {now}\n\n"
                    last = now
                if view.status.terminal:
                    return
                try:
                    await asyncio.wait_for(waiter.wait(), keepalive)
                except TimeoutError:
                    yield ": keepalive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return router


def _plain(title: str, detail: str) -> str:
    from html import escape

    return (
        f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
        f"<body style='font:16px system-ui;padding:3em'><h1>{escape(title)}</h1><p>{escape(detail)}</p>"
    )
