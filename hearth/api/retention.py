"""HEARTH_CLI_RETENTION: the homes of CLI sandboxes unused that long are removed — an admin sees what would go first
(a dry run), then runs it. Only this node's, only stopped ones, never one a prompt uses; the sealed credentials stay
in the vault (the next prompt delivers them into a fresh home)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import select

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.api.schemas import UtcDatetime
from hearth.clisandbox.manager import CliSandboxes, Elsewhere
from hearth.store.models import CliSandboxRow

log = logging.getLogger("hearth.clisandbox")


class Expired(BaseModel):
    user_id: str
    last_used_at: UtcDatetime
    home: str


class RetentionOut(BaseModel):
    retention_seconds: float = Field(description="HEARTH_CLI_RETENTION; 0: homes are kept forever")
    dry_run: bool
    homes: list[Expired] = Field(description="unused longer than the retention: what goes (or went)")


async def expired(clis: CliSandboxes) -> list[Expired]:
    """This node's stopped CLI sandboxes unused for longer than HEARTH_CLI_RETENTION (none when it is 0)."""
    keep = clis.s.cli_retention
    if keep <= 0:
        return []
    cutoff = datetime.now(UTC) - timedelta(seconds=keep)
    rows = await clis.db.run(
        lambda db: list(
            db.scalars(
                select(CliSandboxRow).where(CliSandboxRow.node_id == clis.s.node_id, CliSandboxRow.state == "stopped")
            )
        )
    )
    out = []
    for r in rows:
        last = r.last_used_at if r.last_used_at.tzinfo else r.last_used_at.replace(tzinfo=UTC)
        if last < cutoff and not clis.busy(r.user_id):
            out.append(Expired(user_id=r.user_id, last_used_at=last, home=r.home))
    return out


async def remove_expired(clis: CliSandboxes) -> list[Expired]:
    gone = []
    for e in await expired(clis):
        try:
            if await clis.delete(e.user_id):
                gone.append(e)
                log.info("CLI home removed after HEARTH_CLI_RETENTION", extra={"user": e.user_id})
        except Elsewhere:
            continue
    return gone


def make_router(clis: CliSandboxes, keys: ApiKeys) -> APIRouter:
    router = APIRouter(dependencies=[Depends(keys)], tags=["admin"], responses=problems.declare(401, 503))

    @router.get("/api/admin/cli-retention", response_model=RetentionOut)
    async def dry_run() -> RetentionOut:
        """What HEARTH_CLI_RETENTION would remove on this node now (nothing is removed)."""
        return RetentionOut(retention_seconds=clis.s.cli_retention, dry_run=True, homes=await expired(clis))

    @router.post("/api/admin/cli-retention", response_model=RetentionOut)
    async def run() -> RetentionOut:
        """Remove the homes the dry run lists (those still unused and stopped at this moment)."""
        return RetentionOut(retention_seconds=clis.s.cli_retention, dry_run=False, homes=await remove_expired(clis))

    return router
