"""The agent's configuration: one JSON file written by the driver (`/run/hearth/agent.json`), checked as a whole.

The file holds the per-sandbox secret; nothing here ever puts the secret into a message or a repr.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_SCREEN = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}x(8|15|16|24|30|32)$")
MIN_SECRET = 16
VNC_SERVERS = ("xvnc", "x11vnc")


class ConfigError(ValueError):
    """The agent configuration is missing, unreadable or invalid; the message names every problem."""


@dataclass(frozen=True)
class AgentConfig:
    ip: str
    secret: str = field(repr=False)
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
    session_id: str = ""
    callback: str = ""  # controller URL for agent → controller calls (extensions)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # every key, for extensions


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


def parse_config(data: Any) -> AgentConfig:
    """Validate a decoded config document; raise ConfigError listing every problem (never echoing the secret)."""
    if not isinstance(data, dict):
        raise ConfigError("agent config must be a JSON object")
    problems: list[str] = []
    ip = _text(data.get("ip"), "ip", problems)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        problems.append("ip must be an IP address")
    secret = data.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET:
        problems.append(f"secret must be a string of at least {MIN_SECRET} characters")
        secret = ""
    screen = _text(data.get("screen", "1280x800x24"), "screen", problems)
    if screen and not _SCREEN.match(screen):
        problems.append("screen must look like WIDTHxHEIGHTxDEPTH, e.g. 1280x800x24")
    cfg = AgentConfig(
        ip=ip,
        secret=secret,
        agent_port=_port(data.get("agent_port", 8080), "agent_port", problems),
        rfb_port=_port(data.get("rfb_port", 5900), "rfb_port", problems),
        screen=screen,
        start_url=_text(data.get("start_url", "about:blank"), "start_url", problems),
        chromium=_flag(data.get("chromium", True), "chromium", problems),
        browser_on_request=_flag(data.get("browser_on_request", False), "browser_on_request", problems),
        desktop=_flag(data.get("desktop", True), "desktop", problems),
        session_id=_text(data.get("session_id", ""), "session_id", problems),
        vnc_server=_text(data.get("vnc_server", "xvnc"), "vnc_server", problems),
        callback=_text(data.get("callback", ""), "callback", problems),
        raw=dict(data),
    )
    if cfg.vnc_server not in VNC_SERVERS:
        problems.append(f"vnc_server must be one of {', '.join(VNC_SERVERS)}")
    if cfg.start_url.startswith("-"):
        problems.append("start_url must not start with '-'")
    if problems:
        raise ConfigError("invalid agent config: " + "; ".join(problems))
    return cfg


def load_config(path: str) -> AgentConfig:
    """From a file, or from an inherited descriptor named `/dev/fd/N` (a pipe: read from the descriptor itself, never
    reopened through /proc — the pipe belongs to the launcher — and closed after)."""
    fd = path[len("/dev/fd/") :] if path.startswith("/dev/fd/") else ""
    try:
        with os.fdopen(int(fd), encoding="utf-8") if fd.isdigit() else open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSONDecodeError: its message names a position, not the content
        raise ConfigError(f"agent config {path} is not valid JSON: {exc}") from None
    return parse_config(data)
