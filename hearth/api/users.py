"""Per-user routes: credential metadata (never contents) and the persistent CLI sandbox."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.api.schemas import UtcDatetime
from hearth.clisandbox.manager import CliSandboxes
from hearth.vault.store import Vault


class CredentialOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from the vault's CredentialMeta (user_id left out)

    provider: str
    key_id: str
    files: list[str]
    created_at: UtcDatetime
    updated_at: UtcDatetime
    delivered_at: UtcDatetime | None
    version: int = Field(1, description="+1 per re-seal: a sign-in, or the CLI's own refresh pushed back")
    refreshed_at: UtcDatetime | None = Field(None, description="when the CLI last refreshed it (re-sealed)")
    status: Literal["active", "needs_signin"] = "active"
    status_reason: str | None = Field(None, description="needs_signin: the CLI's own reason (expired, revoked)")
    last_used_at: UtcDatetime | None = Field(None, description="the last prompt that used it")


class RevokedOut(BaseModel):
    provider: str
    removed_from_cli_sandbox: list[str]


class CliSandboxOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from the manager's CliView

    user_id: str
    state: str
    node: str = Field("local", description="the node that runs (and keeps the home of) the CLI sandbox")
    sandbox_ip: str | None
    created_at: UtcDatetime
    last_used_at: UtcDatetime


def make_router(vault: Vault, clis: CliSandboxes, keys: ApiKeys) -> APIRouter:
    router = APIRouter(
        dependencies=[Depends(keys)], tags=["users"], responses=problems.declare(401, 404, 421, 502, 503)
    )

    @router.get("/api/auth/credentials/{user_id}", response_model=list[CredentialOut])
    async def credentials(user_id: str) -> list[CredentialOut]:
        """Metadata of the user's sealed credentials, per provider. Contents are never returned."""
        return [CredentialOut.model_validate(m) for m in await vault.list(user_id)]

    @router.delete("/api/auth/credentials/{user_id}/{provider}", response_model=RevokedOut)
    async def revoke(user_id: str, provider: str) -> RevokedOut:
        """Revoke one provider's credentials: first remove the delivered files from the user's CLI sandbox (through
        its agent), then delete the sealed record. If the removal fails, the record stays and the call can be
        retried: nothing is half-revoked."""
        meta = next((m for m in await vault.list(user_id) if m.provider == provider), None)
        if meta is None:
            raise HTTPException(404, f"no credentials of {provider!r} for user {user_id!r}")
        removed = await clis.remove(user_id, meta.files)
        await vault.revoke(user_id, provider)
        return RevokedOut(provider=provider, removed_from_cli_sandbox=removed)

    @router.get("/api/users/{user_id}/cli-sandbox", response_model=CliSandboxOut)
    async def cli_sandbox(user_id: str) -> CliSandboxOut:
        view = await clis.get(user_id)
        if view is None:
            raise HTTPException(404, f"user {user_id!r} has no CLI sandbox yet (one is created on first delivery)")
        return CliSandboxOut.model_validate(view)

    @router.delete("/api/users/{user_id}/cli-sandbox", status_code=204)
    async def delete_cli_sandbox(user_id: str) -> None:
        """Stop the CLI sandbox and delete its persistent home."""
        if not await clis.delete(user_id):
            raise HTTPException(404, f"user {user_id!r} has no CLI sandbox")

    return router
