"""The agent-config document: what every driver gives its agent (the netns driver through a pipe, a VM through its
config drive) — built by the controller with `build`, completed in a VM guest with `locate`, checked as a whole by
the agent with `parse`. It holds the per-sandbox secret: nothing here ever puts it into a message or a repr.

The agent's identity (secret, session id, the provider definitions it may run) is one immutable value: the warm
pool's hand-over (`POST /v1/personalise`, `personalise_body` → `parse_identity`) replaces it whole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from hearth_agent.record import dataclass, field  # not dataclasses: it imports inspect (hearth_agent/record.py)

VERSION = 1
_SCREEN = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}x(8|15|16|24|30|32)$")
MIN_SECRET = 16
VNC_SERVERS = ("xvnc", "x11vnc")
IDENTITY_KEYS = ("secret", "session_id", "providers")


class ConfigError(ValueError):
    """The agent configuration is missing, unreadable or invalid; the message names every problem."""


@dataclass(frozen=True)
class Identity:
    """Who the agent is: the secret it answers to and pushes with, its session, the provider definitions (digests,
    hearth_agent.providerdef.definition_digest) it may run — None: any (an agent a test started on its own)."""

    secret: str = field(repr=False)
    session_id: str = ""
    providers: tuple[str, ...] | None = None

    def allows(self, digest: str) -> bool:
        return self.providers is None or digest in self.providers


@dataclass(frozen=True)
class AgentConfig:
    ip: str
    identity: Identity  # the one it starts with; the agent's server holds the current one (hearth_agent/server.py)
    agent_port: int = 8080
    rfb_port: int = 5900
    screen: str = "1280x800x24"
    start_url: str = "about:blank"
    chromium: bool = True
    # True: Chromium waits until asked (POST /v1/browser — the controller's turn for it in its boot queue) or until a
    # page must be shown (open-url); a boot storm then brings desktops up first and browsers after.
    browser_on_request: bool = False
    desktop: bool = True  # False: no display at all (a CLI sandbox: the agent only)
    vnc_server: str = "xvnc"  # "xvnc": TigerVNC's Xvnc (display + VNC in one); "x11vnc": Xvfb + x11vnc
    callback: str = ""  # controller URL for agent → controller calls (extensions)
    # every other key, read-only, for extensions (egress_proxy, extra_ca_certs, ...); never the identity's keys
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)


def build(
    secret: str,
    session_id: str,
    providers: Sequence[str],
    callback: str,
    *,
    ip: str | None = None,
    screen: str = "1280x800x24",
    start_url: str = "about:blank",
    chromium: bool = True,
    browser_on_request: bool = False,
    desktop: bool = True,
    vnc_server: str = "xvnc",
    agent_port: int = 8080,
    rfb_port: int = 5900,
    nameservers: Sequence[str] = (),
    egress_proxy: Mapping[str, Any] | None = None,
    extra_ca_certs: Any = None,
) -> dict[str, Any]:
    """The document for one sandbox (plain JSON). `ip` is the address the agent binds; a VM guest's comes from its
    kernel's `ip=` argument instead (`locate`). `nameservers`: the guest's resolv.conf (VMs); `egress_proxy`: the
    agent's local proxy (hearth_agent/egress.py); `extra_ca_certs`: PEM text the CLIs and Chromium trust."""
    doc: dict[str, Any] = {
        "version": VERSION,
        "session_id": session_id,
        "secret": secret,
        "screen": screen,
        "start_url": start_url,
        "chromium": chromium,
        "browser_on_request": browser_on_request,
        "rfb_port": rfb_port,
        "agent_port": agent_port,
        "desktop": desktop,
        "vnc_server": vnc_server,
        "callback": callback,
        "providers": list(providers),
        "nameservers": list(nameservers),
        "egress_proxy": None if egress_proxy is None else dict(egress_proxy),
        "extra_ca_certs": extra_ca_certs,
    }
    if ip is not None:
        doc["ip"] = ip
    return doc


def locate(doc: Mapping[str, Any], ip: str = "", default_callback: str = "") -> dict[str, Any]:
    """`doc` completed with what a VM guest learns from its kernel's `ip=`: its address (the only source of it) and,
    when the document names none, a callback URL on the gateway."""
    out = dict(doc)
    if ip:
        out["ip"] = ip
    if not out.get("callback") and default_callback:
        out["callback"] = default_callback
    return out


def _port(value: Any, name: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.append(f"{name} must be a TCP port number (1-65535)")
        return 0
    return value


def _flag(value: Any, name: str, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        problems.append(f"{name} must be true or false")
        return False
    return value


def _text(value: Any, name: str, problems: list[str]) -> str:
    if not isinstance(value, str):
        problems.append(f"{name} must be a string")
        return ""
    return value


def _identity(data: Mapping[str, Any], problems: list[str]) -> Identity:
    secret = data.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET:
        problems.append(f"secret must be a string of at least {MIN_SECRET} characters")
        secret = ""
    session_id = _text(data.get("session_id", ""), "session_id", problems)
    providers = data.get("providers")
    if providers is not None and (not isinstance(providers, list) or not all(isinstance(p, str) for p in providers)):
        problems.append("providers must be a list of provider definition digests")
        providers = []
    return Identity(secret, session_id, None if providers is None else tuple(providers))


def parse(data: Any) -> AgentConfig:
    """Validate a decoded config document; raise ConfigError listing every problem (never echoing the secret)."""
    if not isinstance(data, dict):
        raise ConfigError("agent config must be a JSON object")
    problems: list[str] = []
    ip = _text(data.get("ip"), "ip", problems)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        problems.append("ip must be an IP address")
    identity = _identity(data, problems)
    screen = _text(data.get("screen", "1280x800x24"), "screen", problems)
    if screen and not _SCREEN.match(screen):
        problems.append("screen must look like WIDTHxHEIGHTxDEPTH, e.g. 1280x800x24")
    cfg = AgentConfig(
        ip=ip,
        identity=identity,
        agent_port=_port(data.get("agent_port", 8080), "agent_port", problems),
        rfb_port=_port(data.get("rfb_port", 5900), "rfb_port", problems),
        screen=screen,
        start_url=_text(data.get("start_url", "about:blank"), "start_url", problems),
        chromium=_flag(data.get("chromium", True), "chromium", problems),
        browser_on_request=_flag(data.get("browser_on_request", False), "browser_on_request", problems),
        desktop=_flag(data.get("desktop", True), "desktop", problems),
        vnc_server=_text(data.get("vnc_server", "xvnc"), "vnc_server", problems),
        callback=_text(data.get("callback", ""), "callback", problems),
        raw=MappingProxyType({k: v for k, v in data.items() if k not in IDENTITY_KEYS}),
    )
    if cfg.vnc_server not in VNC_SERVERS:
        problems.append(f"vnc_server must be one of {', '.join(VNC_SERVERS)}")
    if cfg.start_url.startswith("-"):
        problems.append("start_url must not start with '-'")
    if problems:
        raise ConfigError("invalid agent config: " + "; ".join(problems))
    return cfg


def personalise_body(identity: Identity) -> dict[str, Any]:
    """`POST /v1/personalise` (sent with the pool's secret): the identity that replaces the agent's whole."""
    return {"secret": identity.secret, "session_id": identity.session_id, "providers": list(identity.providers or ())}


def parse_identity(body: Mapping[str, Any]) -> Identity:
    """A hand-over's identity (all three keys required); ValueError naming the first problem (never the secret)."""
    secret, sid, providers = body.get("secret"), body.get("session_id"), body.get("providers")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET:
        raise ValueError(f"secret must be a string of at least {MIN_SECRET} characters")
    if not isinstance(sid, str) or not sid:
        raise ValueError("session_id must be a non-empty string")
    if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
        raise ValueError("providers must be a list of provider definition digests")
    return Identity(secret, sid, tuple(providers))
