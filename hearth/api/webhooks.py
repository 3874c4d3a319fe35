"""`GET /api/webhooks/deliveries`: every webhook in the outbox — pending, delivered or failed — with its attempts,
the receiver's last answer or the error, and when it is tried next. Newest first, paginated by `before`."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.api.schemas import UtcDatetime
from hearth.store.db import Database
from hearth.store.models import OutboxRow

DeliveryState = Literal["pending", "delivered", "failed"]
MAX_ID = 2_147_483_647  # the outbox's sequence is a 32-bit integer column


class DeliveryOut(BaseModel):
    sequence: int = Field(description="order of writing; a stream's events are delivered in this order")
    webhook_id: str = Field(description="the `webhook-id` header (the same on every retry)")
    type: str = Field(examples=["session.ready"])
    stream: str = Field(description="the session id (its states and credential events), or user:<id>")
    state: DeliveryState
    attempts: int
    last_status: int | None = Field(None, description="the receiver's HTTP status at the last attempt")
    last_error: str | None = Field(None, description="why the last attempt was not acknowledged (names the hop)")
    next_attempt_at: UtcDatetime | None = Field(None, description="while pending: not tried before this")
    created_at: UtcDatetime
    attempted_at: UtcDatetime | None
    delivered_at: UtcDatetime | None


class DeliveriesOut(BaseModel):
    enabled: bool = Field(description="HEARTH_WEBHOOK_URL is set on this node (nothing is written otherwise)")
    deliveries: list[DeliveryOut]
    next_before: int | None = Field(None, description="pass as `before` for the next (older) page; null: last page")


def _out(r: OutboxRow) -> DeliveryOut:
    return DeliveryOut(
        sequence=r.id,
        webhook_id=r.msg_id,
        type=r.type,
        stream=r.stream,
        state=r.state,  # type: ignore[arg-type]  # one of DeliveryState (written by hearth/webhooks only)
        attempts=r.attempts,
        last_status=r.last_status,
        last_error=r.last_error,
        next_attempt_at=r.next_attempt_at if r.state == "pending" else None,
        created_at=r.created_at,
        attempted_at=r.attempted_at,
        delivered_at=r.delivered_at,
    )


_RESPONSES: dict[int | str, dict[str, Any]] = problems.declare(  # with the limits middleware's 400, 413, 429
    401,
    503,
    _422="a query parameter is not valid (named in `error`)",
    _503="the state store is unavailable (`Retry-After`)",
)


def make_router(db: Database, keys: ApiKeys, enabled: bool) -> APIRouter:
    router = APIRouter(dependencies=[Depends(keys)], tags=["webhooks"])

    @router.get("/api/webhooks/deliveries", response_model=DeliveriesOut, responses=_RESPONSES)
    async def deliveries(
        state: DeliveryState | None = Query(None, description="only pending, delivered or failed ones"),
        session_id: str | None = Query(
            None, max_length=240, pattern=r"^[A-Za-z0-9_.@:\-]+$", description="only this stream (a session id)"
        ),
        before: int | None = Query(None, ge=1, le=MAX_ID, description="only sequences below this (pagination)"),
        limit: int = Query(50, ge=1, le=200),
    ) -> DeliveriesOut:
        """Webhook deliveries, newest first: state, attempts, the receiver's last status or the error, next
        attempt. Delivered and failed ones are kept for 7 days."""

        def q(s: Db) -> list[DeliveryOut]:
            stmt = select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit + 1)
            if state is not None:
                stmt = stmt.where(OutboxRow.state == state)
            if session_id is not None:
                stmt = stmt.where(OutboxRow.stream == session_id)
            if before is not None:
                stmt = stmt.where(OutboxRow.id < before)
            return [_out(r) for r in s.scalars(stmt)]

        rows = await db.run(q)
        more = len(rows) > limit
        rows = rows[:limit]
        return DeliveriesOut(enabled=enabled, deliveries=rows, next_before=rows[-1].sequence if more else None)

    return router
