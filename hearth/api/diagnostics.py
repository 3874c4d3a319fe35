"""Diagnostics routes: `GET /api/diagnostics` (host and fabric) and `GET /api/diagnostics/{session_id}` (the
session's whole path). Both answer 200 with the report — `ok`, the checks in path order, `first_failure` — even
when something is broken; 404 for an unknown session. API-key authentication like every other route."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.doctor import Parts, diagnose
from hearth.session.view import SessionNotFound


class CheckOut(BaseModel):
    hop: str
    name: str
    ok: bool | None  # None: not run (a prerequisite failed, or it does not apply)
    evidence: str
    hint: str
    duration_s: float
    data: dict[str, Any] | None = None


class DiagnosisOut(BaseModel):
    session_id: str | None = None
    session: dict[str, Any] | None = None
    ok: bool
    checks: list[CheckOut]
    first_failure: CheckOut | None
    duration_s: float


def make_router(parts: Parts, owned: Callable[[str, str], Awaitable[object]], keys: ApiKeys) -> APIRouter:
    """`parts`: what a diagnosis works with on this node; `owned(session_id, what)` refuses another node's session
    (NotHere: 421 naming it)."""
    router = APIRouter(
        prefix="/api/diagnostics",
        dependencies=[Depends(keys)],
        tags=["diagnostics"],
        responses=problems.declare(401, 404, 421, 502, 503),
    )

    @router.get("", response_model=DiagnosisOut)
    async def host() -> dict[str, Any]:
        """Configuration, fabric namespace, bridge, forwarding, NAT, firewall, pool — first failure named."""
        return (await diagnose(parts)).as_dict()

    @router.get("/{session_id}", response_model=DiagnosisOut)
    async def session(session_id: str, gateway: bool = True) -> dict[str, Any]:
        """The session's whole path, hop by hop (`gateway=false` skips the end-to-end WebSocket check)."""
        try:
            await owned(
                session_id, "diagnostics"
            )  # another node's session: 421 naming it (its path is not this host's)
            report = await diagnose(dataclasses.replace(parts, gateway=gateway), session_id)
        except SessionNotFound:
            raise HTTPException(404, f"no session {session_id}") from None
        return report.as_dict()

    return router
