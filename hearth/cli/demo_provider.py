"""The provider side of `hearth demo`: where the sign-in page the person meets comes from.

- `internet` (the example provider's default): the internet stand-in (hearth/standins/internet.py) — network
  namespaces playing the internet, attached to the demo fabric's uplink (HEARTH_UPLINK_NETNS), with DNS for the
  providers' names (the fabric's forwarder's upstream) and HTTPS under a throwaway CA (HEARTH_EXTRA_CA_CERTS): the
  sandbox reaches `https://idp.example.com` the way a production sandbox reaches a provider.
- `fabric`: the example IdP (hearth_example/idp.py) on the fabric's bridge address, as the sign-in tests reach it
  (a port opened to the sandboxes with HEARTH_FABRIC_OPEN_PORTS): no DNS, no egress.
- a real provider: nothing here; the sandbox reaches it over this host's internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.fabric.dial import socket_in_netns

IDP_PORT = 9400  # `fabric`: the example IdP's port on the bridge address (inside the demo's own fabric namespace)
VIAS = ("internet", "fabric")


@dataclass
class Side:
    provider: str
    via: str  # "internet" | "fabric" | "" (a real provider)
    env: dict[str, str] = field(default_factory=dict)  # the controller's settings for it
    netns: list[str] = field(default_factory=list)  # namespaces it made (gone after the demo)
    dirs: list[Path] = field(default_factory=list)
    state: Any = None  # the example IdP's IdpState: what it saw
    inet: Any = None  # the internet stand-in (its DNS log and the requests it answered)
    line: str = ""  # what it is, in words

    def saw(self) -> str:
        """What the provider saw of the sign-in, in words ("" for a real provider)."""
        if self.state is None:
            return ""
        with self.state.lock:
            events: list[dict[str, Any]] = list(self.state.events)
        page = next((e for e in events if e["kind"] == "authorize_page"), None)
        said = ["its sign-in page loaded by " + ("Chromium" if page and "Chrome" in page["user_agent"] else "nobody")]
        approved = next((e for e in events if e["kind"] == "approved"), None)
        if approved is not None:
            said.append(f"approved for {approved['email']}" if approved.get("email") else "approved")
        if any(e["kind"] == "token_issued" for e in events):
            said.append("tokens issued to the CLI (code + PKCE)")
        if self.inet is not None:
            from hearth.standins.internet import EXAMPLE_HOST

            asked = sum(1 for q in self.inet.dns.log.queries if q.name == EXAMPLE_HOST)
            with self.inet.traffic.lock:
                peers = sorted({s.peer for s in self.inet.traffic.seen if s.host == EXAMPLE_HOST})
            said.append(f"its name asked {asked} times of its DNS (by the fabric's forwarder)")
            said.append(f"every request from {', '.join(peers) or 'nowhere'} (the host's side: the fabric's egress)")
        return ", ".join(said)


@contextlib.contextmanager
def outside(provider: str, via: str) -> Iterator[Side]:
    """What exists before the controller: the internet stand-in (removed on exit) and the settings for it."""
    if provider != "example":
        yield Side(provider, "", line=f"provider {provider}: its real sign-in page, over this host's internet")
        return
    if via == "fabric":
        yield Side(provider, via, env={"HEARTH_FABRIC_OPEN_PORTS": str(IDP_PORT)})
        return
    from hearth.standins.internet import DNS_IP, internet

    with internet("hearth-demo-i") as inet:
        env = {**inet.settings_env(), "HEARTH_EGRESS": "true"}
        line = (
            f"provider example at {inet.example_issuer} on the internet stand-in (namespaces {inet.uplink_netns}, "
            f"{inet.netns}): its DNS {DNS_IP} is the fabric's upstream resolver, its HTTPS certificate from a "
            "throwaway CA given as HEARTH_EXTRA_CA_CERTS, reached through the fabric's uplink"
        )
        yield Side(
            provider,
            via,
            env=env,
            netns=[inet.uplink_netns, inet.netns, inet.person_netns],
            dirs=[inet.dir],
            state=inet.idp,
            inet=inet,
            line=line,
        )


def settle(side: Side, settings: Settings) -> Settings:
    """The settings with the example issuer on the bridge address (`fabric`: known once the settings are)."""
    if side.via != "fabric":
        return settings
    return settings.model_copy(update={"example_issuer": f"http://{settings.bridge_ip}:{IDP_PORT}"})


@contextlib.asynccontextmanager
async def inside(side: Side, settings: Settings) -> AsyncIterator[None]:
    """What needs the controller's fabric: the example IdP on the bridge address (`fabric`)."""
    if side.via != "fabric":
        yield
        return
    from hearth_example.idp import IdpServer, IdpState

    def start() -> IdpServer:
        sock = socket_in_netns(settings.fabric_netns)
        sock.bind((str(settings.bridge_ip), IDP_PORT))
        server = IdpServer(sock, IdpState(auto_approve=False))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    server = await asyncio.to_thread(start)
    side.state = server.state
    side.line = f"provider example: its OAuth server at {settings.example_issuer} (inside the fabric namespace)"
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
