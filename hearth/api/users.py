"""Per-user routes: credential metadata (never contents) and the persistent CLI sandbox."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from hearth.api.auth import ApiKeys
from hearth.clisandbox.manager import CliSandboxes
from hearth.vault.store import Vault


class CredentialOut(BaseModel):
    provider: str
    key_id: str
    files: list[str]
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class CliSandboxOut(BaseModel):
    user_id: str
    state: str
    sandbox_ip: str | None
    created_at: datetime
    last_used_at: datetime


def make_router(vault: Vault, clis: CliSandboxes, keys: ApiKeys) -> APIRouter:
    router = APIRouter(dependencies=[Depends(keys)], tags=["users"])

    @router.get("/api/auth/credentials/{user_id}", response_model=list[CredentialOut])
    async def credentials(user_id: str) -> list[CredentialOut]:
        """Metadata of the user's sealed credentials, per provider. Contents are never returned."""
        return [
            CredentialOut(
                provider=m.provider,
                key_id=m.key_id,
                files=m.files,
                created_at=m.created_at,
                updated_at=m.updated_at,
                delivered_at=m.delivered_at,
            )
            for m in await vault.list(user_id)
        ]

    @router.delete("/api/auth/credentials/{user_id}/{provider}", status_code=204)
    async def revoke(user_id: str, provider: str) -> None:
        """Delete the sealed credentials of one provider (files already installed in the CLI sandbox stay there
        until the CLI sandbox is deleted)."""
        if not await vault.revoke(user_id, provider):
            raise HTTPException(404, f"no credentials of {provider!r} for user {user_id!r}")

    @router.get("/api/users/{user_id}/cli-sandbox", response_model=CliSandboxOut)
    async def cli_sandbox(user_id: str) -> CliSandboxOut:
        view = await clis.get(user_id)
        if view is None:
            raise HTTPException(404, f"user {user_id!r} has no CLI sandbox yet (one is created on first delivery)")
        return CliSandboxOut(**view.__dict__)

    @router.delete("/api/users/{user_id}/cli-sandbox", status_code=204)
    async def delete_cli_sandbox(user_id: str) -> None:
        """Stop the CLI sandbox and delete its persistent home."""
        if not await clis.delete(user_id):
            raise HTTPException(404, f"user {user_id!r} has no CLI sandbox")

    return router
