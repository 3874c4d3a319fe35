"""What a sandbox gets for egress, decided by the controller: whether its Chromium and CLIs go through the agent's
local proxy (HEARTH_EGRESS_PROXY set), the user's upstream URL (their port, with the proxy's credentials — for the
sealed agent config or the agent's `POST /v1/egress`, nothing else), and the extra CAs (HEARTH_EXTRA_CA_CERTS)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any, Protocol

from sqlalchemy import select

from hearth.config import Settings
from hearth.config.proxy import egress_of
from hearth.proxy.ports import assign
from hearth.store.db import Database
from hearth.store.models import SessionRow
from hearth_agent.contract import routes

HAND_TIMEOUT = 10.0


class Agent(Protocol):
    """The sandbox's agent as this module needs it (hearth.agentlink.client.AgentClient is one; the agent link sits
    above the proxy folder, so it is not imported here)."""

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any: ...


class EgressPlan:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.s, self.db = settings, db
        self.egress = egress_of(settings.egress_proxy, settings.egress_proxy_ports, settings.extra_ca_certs)

    @property
    def local_proxy(self) -> bool:
        return self.egress.proxy is not None

    @property
    def extra_ca(self) -> str:
        return self.egress.extra_ca

    @property
    def allow(self) -> tuple[str, ...]:
        """HEARTH_EGRESS_ALLOW for the agent's local proxy (the agent-config document's `egress_proxy.allow`)."""
        return tuple(str(n) for n in self.s.egress_allow)

    def proxy_names(self) -> set[str]:
        """The upstream proxy's host when it is a name: each sandbox's agent resolves it (through the fabric's DNS
        forwarder, which must answer it under HEARTH_EGRESS_POLICY=provider)."""
        if self.egress.proxy is None:
            return set()
        host = self.egress.proxy.host.strip("[]")
        try:
            ip_address(host)
        except ValueError:
            return {host}
        return set()

    async def url_for_user(self, user_id: str) -> str:
        """The user's upstream proxy URL (their port assigned now if they had none); "" without a proxy. Raises
        PortsExhausted (hop proxy) when no port is left, StoreError while the store is down."""
        if self.egress.proxy is None:
            return ""
        got = await assign(self.db, user_id, self.egress.ports, self.s.node_id)
        return self.egress.proxy.url(got.port)

    async def url_for_session(self, session_id: str) -> str:
        if self.egress.proxy is None:
            return ""
        user = await self.db.run(lambda db: db.scalar(select(SessionRow.user_id).where(SessionRow.id == session_id)))
        return await self.url_for_user(user) if user else ""

    async def hand_to(self, agent: Agent, url: str) -> None:
        """A pooled sandbox becomes someone's: its local proxy chains to their port from now on."""
        if url:
            await agent.call("POST", routes.EGRESS, {"upstream": url}, timeout=HAND_TIMEOUT)
