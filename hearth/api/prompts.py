"""The prompts API (docs/prompts.md): submit, read, stream (SSE resumable with Last-Event-ID, and the same events on
a WebSocket at the same path), cancel, paginated history, deletion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.api.schemas import UtcDatetime
from hearth.prompts.service import PromptRefused, PromptRequest, PromptService
from hearth.prompts.states import PromptStatus
from hearth.store.models import PromptRow

KEEPALIVE = 15.0  # s between SSE comments while nothing happens (proxies keep the stream open)


class PromptIn(BaseModel):
    provider: str = Field(min_length=1, max_length=64)
    prompt: str = Field(description="passed to the CLI as data (stdin or one argument); HEARTH_MAX_PROMPT_BYTES")
    model: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^-\x00-\x1f]")
    conversation_id: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"^[^-\x00-\x1f]", description="a finished prompt's, to continue"
    )
    permissions: Literal["read_only", "workspace_write"] = "read_only"
    timeout: float | None = Field(None, gt=0, le=86400, description="seconds; at most HEARTH_PROMPT_TIMEOUT")


class PromptAccepted(BaseModel):
    prompt_id: str
    status: str
    stream_url: str


class PromptOut(BaseModel):
    id: str
    user_id: str
    provider: str
    status: Literal["queued", "starting", "running", "completed", "failed", "cancelled", "timed_out"]
    permissions: str
    model: str | None
    conversation_id: str | None = Field(description="the CLI's own session: send it back to continue")
    resumed_from: str | None
    exit_code: int | None
    step: str | None = Field(description="the failing step: sandbox, credentials, cli, provider_api, timeout")
    reason: str | None
    usage: dict[str, Any]
    timings: dict[str, Any] = Field(description="ISO times: queued, sandbox_ready, started, first_output, done")
    answer: str | None = Field(None, description="the final answer (kept for HEARTH_PROMPT_RETENTION, sealed)")
    truncated: bool
    created_at: UtcDatetime
    ended_at: UtcDatetime | None


class PromptPage(BaseModel):
    items: list[PromptOut]
    total: int
    next_offset: int | None


class Deleted(BaseModel):
    deleted: int


def _out(row: PromptRow, answer: str | None = None) -> PromptOut:
    return PromptOut(
        id=row.id, user_id=row.user_id, provider=row.provider, status=row.status,  # type: ignore[arg-type]
        permissions=row.permissions, model=row.model, conversation_id=row.conversation_id,
        resumed_from=row.resumed_from, exit_code=row.exit_code, step=row.step, reason=row.reason,
        usage=dict(row.usage or {}), timings=dict(row.timings or {}), answer=answer, truncated=bool(row.truncated),
        created_at=row.created_at, ended_at=row.ended_at,
    )  # fmt: skip


def _sse(event: str, data: Any, eid: int | None = None) -> str:
    head = f"id: {eid}\n" if eid is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=True)}\n\n"


async def events(svc: PromptService, pid: str, after: int, raw: bool) -> AsyncIterator[tuple[str, Any, int | None]]:
    """(event name, data, sequence id) from `after` on, live, until the prompt has ended and all is sent; a
    ("keepalive", None, None) while nothing happens. Raw CLI lines (`raw`) come as they were stored, without ids."""
    cursor, raw_after = after, (0 if raw else None)
    while True:
        ticket = svc.changes.ticket(pid)  # before reading: a store write after the read still wakes us
        row = await svc.store.get(pid)
        if row is None:
            yield "end", {"status": "deleted"}, None
            return
        for c in await svc.store.chunks(row, cursor, raw_after):
            if c.kind == "raw":
                raw_after = max(raw_after or 0, c.id)
                for line in c.items:
                    yield "raw", line, None
                continue
            for e in c.items:
                if e["seq"] > cursor:
                    cursor = e["seq"]
                    yield e["type"], {k: v for k, v in e.items() if k != "seq"}, cursor
        if PromptStatus(row.status).terminal:
            yield "end", {"status": row.status, "step": row.step, "reason": row.reason}, None
            return
        try:
            await asyncio.wait_for(ticket.wait(), KEEPALIVE)
        except TimeoutError:
            yield "keepalive", None, None


def make_router(svc: PromptService, keys: ApiKeys) -> APIRouter:
    router = APIRouter(tags=["prompts"])
    auth = [Depends(keys)]

    async def row_or_404(pid: str) -> PromptRow:
        row = await svc.store.get(pid)
        if row is None:
            raise HTTPException(404, f"unknown prompt {pid!r}")
        return row

    @router.post(
        "/api/users/{user_id}/prompts",
        status_code=202,
        response_model=PromptAccepted,
        dependencies=auth,
        responses=problems.declare(
            401,
            409,
            421,
            503,
            _409="no usable credential for that provider (the reason says which sign-in to start)",
            _413="the prompt is over HEARTH_MAX_PROMPT_BYTES (or the body over the request limit)",
            _429="HEARTH_MAX_PROMPTS_PER_USER prompts queued or running (or the API rate limit)",
            _503="the prompt queue is full (HEARTH_PROMPT_QUEUE) or the store is unavailable",
            _400="an empty prompt, an unknown provider or conversation",
        ),
    )
    async def submit(user_id: str, body: PromptIn) -> JSONResponse:
        """Run a prompt through the user's own signed-in CLI in their CLI sandbox (started or resumed on demand)."""
        req = PromptRequest(
            body.provider, body.prompt, body.model, body.conversation_id, body.permissions, body.timeout
        )
        try:
            row = await svc.submit(user_id, req)
        except PromptRefused as exc:
            headers = {"Retry-After": "5"} if exc.status in (429, 503) else None
            return problems.AsciiJSON({"error": str(exc)}, status_code=exc.status, headers=headers)
        out = PromptAccepted(prompt_id=row.id, status=row.status, stream_url=f"/api/prompts/{row.id}/stream")
        return JSONResponse(out.model_dump(), status_code=202)

    @router.get(
        "/api/prompts/{prompt_id}",
        response_model=PromptOut,
        dependencies=auth,
        responses=problems.declare(401, 404, 503),
    )
    async def get(prompt_id: str) -> PromptOut:
        """Status, exit code, model, timings, usage, the answer and the failure reason naming the step."""
        row = await row_or_404(prompt_id)
        return _out(row, svc.store.answer_text(row))

    @router.get(
        "/api/prompts/{prompt_id}/stream",
        response_class=StreamingResponse,
        dependencies=auth,
        responses=problems.also("text/event-stream", problems.declare(401, 404, 503), 200),
    )
    async def stream(
        prompt_id: str,
        raw: bool = Query(False, description="also the CLI's raw JSON lines (event: raw)"),
        last_event_id: str | None = Header(None),
    ) -> StreamingResponse:
        """Server-sent events: text, tool, usage, error, done (id = sequence number; Last-Event-ID resumes), then
        `end` with the final status. The same events come as JSON messages on a WebSocket at this path."""
        await row_or_404(prompt_id)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0

        async def body() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            async for name, data, eid in events(svc, prompt_id, after, raw):
                yield ": keepalive\n\n" if name == "keepalive" else _sse(name, data, eid)

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @router.websocket("/api/prompts/{prompt_id}/stream")
    async def stream_ws(ws: WebSocket, prompt_id: str, raw: bool = False, last_event_id: int = 0) -> None:
        if not keys.admits(ws):  # an API key, or an edge's node credential (the edge checked the key)
            await ws.close(code=4401, reason="missing or invalid API key")
            return
        if await svc.store.get(prompt_id) is None:
            await ws.close(code=4404, reason="unknown prompt")
            return
        await ws.accept()
        try:
            async for name, data, eid in events(svc, prompt_id, max(0, last_event_id), raw):
                if name != "keepalive":
                    await ws.send_json({"event": name, "id": eid, "data": data})
            await ws.close()
        except WebSocketDisconnect:
            return

    @router.post(
        "/api/prompts/{prompt_id}/cancel",
        response_model=PromptOut,
        dependencies=auth,
        responses=problems.declare(401, 404, 503),
    )
    async def cancel(prompt_id: str) -> PromptOut:
        """End the CLI's whole process tree in the sandbox (idempotent: an ended prompt is returned as it is)."""
        await row_or_404(prompt_id)
        row = await svc.cancel(prompt_id)
        if row is None:
            raise HTTPException(404, f"unknown prompt {prompt_id!r}")
        return _out(row)

    @router.get(
        "/api/users/{user_id}/prompts",
        response_model=PromptPage,
        dependencies=auth,
        responses=problems.declare(401, 503),
    )
    async def history(
        user_id: str, limit: int = Query(20, ge=1, le=100), offset: int = Query(0, ge=0, le=1_000_000)
    ) -> PromptPage:
        """The user's prompts, newest first (answers with GET /api/prompts/{id})."""
        rows, total = await svc.store.history(user_id, limit, offset)
        nxt = offset + len(rows) if offset + len(rows) < total else None
        return PromptPage(items=[_out(r) for r in rows], total=total, next_offset=nxt)

    @router.delete(
        "/api/users/{user_id}/prompts", response_model=Deleted, dependencies=auth, responses=problems.declare(401, 503)
    )
    async def delete_all(user_id: str) -> Deleted:
        """Delete every prompt of the user (running ones are cancelled first), with their answers."""
        rows, _ = await svc.store.history(user_id, 100_000, 0)
        for r in rows:
            if not PromptStatus(r.status).terminal:
                await svc.cancel(r.id)
        return Deleted(deleted=await svc.store.delete_user(user_id))

    @router.delete(
        "/api/prompts/{prompt_id}", status_code=204, dependencies=auth, responses=problems.declare(401, 404, 503)
    )
    async def delete_one(prompt_id: str) -> None:
        """Delete a prompt with its events and answer (a running one is cancelled first)."""
        row = await row_or_404(prompt_id)
        if not PromptStatus(row.status).terminal:
            await svc.cancel(prompt_id)
        await svc.store.delete(prompt_id)

    return router
