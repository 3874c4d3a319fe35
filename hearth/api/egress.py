"""`GET /api/users/{user_id}/egress`: the user's address on the upstream egress proxy (HEARTH_EGRESS_PROXY) — its
host and the user's port, assigned for life on first use (this call included). Never the proxy's credentials."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from hearth.api import problems
from hearth.api.auth import ApiKeys
from hearth.config import Settings
from hearth.config.proxy import egress_of
from hearth.proxy.ports import PortsExhausted, assign
from hearth.store.db import Database


class ProxyOut(BaseModel):
    host: str = Field(description="the upstream proxy's host (from HEARTH_EGRESS_PROXY)")
    port: int = Field(description="this user's port on it: the same for life, used by their browser and CLIs")


class EgressOut(BaseModel):
    user_id: str
    proxy: ProxyOut


def make_router(settings: Settings, db: Database, keys: ApiKeys) -> APIRouter:
    router = APIRouter(dependencies=[Depends(keys)], tags=["users"], responses=problems.declare(401, 404, 503))
    egress = egress_of(settings.egress_proxy, settings.egress_proxy_ports, None)

    @router.get("/api/users/{user_id}/egress", response_model=EgressOut)
    async def user_egress(user_id: str) -> EgressOut:
        """The user's egress proxy address: the proxy's host and the user's own port (assigned on first use, kept
        for life, unique across nodes). The proxy's credentials are never returned. 404 when no egress proxy is
        configured; 503 when every port of HEARTH_EGRESS_PROXY_PORTS is taken."""
        if egress.proxy is None:
            raise HTTPException(
                404, "no egress proxy is configured (HEARTH_EGRESS_PROXY): sandboxes reach the internet directly"
            )
        try:
            got = await assign(db, user_id, egress.ports, settings.node_id)
        except PortsExhausted as exc:
            raise HTTPException(503, exc.reason) from None
        return EgressOut(user_id=user_id, proxy=ProxyOut(host=egress.proxy.host, port=got.port))

    return router
