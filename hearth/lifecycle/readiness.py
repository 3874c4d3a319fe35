"""Readiness gates: no fixed sleeps. A desktop session is ready only after the controller itself completed an RFB
handshake with the sandbox from inside the fabric; a sandbox without a desktop (direct sign-in, CLI sandboxes) once
its agent answers /health.

The display gate asks the agent to answer when its display runs (`GET /health?wait=`, held by the agent): the
controller learns it the moment it happens instead of at its next poll; an agent that does not hold the request
answers at once and the gate polls. Each gate retries with a short, growing back-off until its deadline, and on timeout raises NotReady naming the hop
whose check never passed and the last thing observed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hearth.agentlink.client import http_json
from hearth.errors import Hop
from hearth.fabric.dial import open_connection
from hearth.rfb.client import ServerInit, handshake
from hearth.sandbox import listening
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.listening import retry as _retry

HOLD_MARGIN = 0.5  # a held /health answers this long before the request's own timeout


@dataclass(frozen=True)
class Target:
    netns: str | None
    ip: str
    rfb_port: int
    agent_port: int
    desktop: bool = True  # False: only the agent runs (no display, no VNC)

    @classmethod
    def of(cls, spec: SandboxSpec, netns: str | None) -> Target:
        return cls(netns, str(spec.slot.ip), spec.rfb_port, spec.agent_port, spec.desktop)


async def http_get_json(netns: str | None, ip: str, port: int, path: str, timeout: float) -> tuple[int, Any]:
    """GET `path` from inside `netns`; returns (status, parsed JSON body)."""
    return await http_json(netns, ip, port, "GET", path, timeout)


async def rfb_handshake(netns: str | None, ip: str, port: int, timeout: float) -> ServerInit:
    reader, writer = await open_connection(netns, ip, port, timeout)
    try:

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        async def read(n: int) -> bytes:
            return await asyncio.wait_for(reader.readexactly(n), timeout)

        return await handshake(read, write)
    finally:
        writer.close()


def _display_running(body: dict[str, Any]) -> None:
    services = body.get("services", {})
    display = services.get("xvnc") or services.get("xvfb") or {}  # Xvnc, or Xvfb (HEARTH_VNC_SERVER=x11vnc)
    if display.get("state") != "running":
        raise ValueError(f"display state {display.get('state')!r}")


async def wait_display(t: Target, deadline: float) -> dict[str, Any]:
    """Agent answers /health and reports the X display running."""
    return await wait_agent(t, deadline, _display_running)


async def wait_vnc(t: Target, deadline: float) -> None:
    """The VNC port accepts a TCP connection."""

    async def attempt(timeout: float) -> None:
        _, writer = await open_connection(t.netns, t.ip, t.rfb_port, timeout)
        writer.close()

    await _retry(
        deadline,
        Hop.VNC,
        f"VNC port {t.ip}:{t.rfb_port}",
        "the VNC server (Xvnc or x11vnc) is not listening; see the agent log",
        attempt,
    )


async def wait_rfb(t: Target, deadline: float) -> ServerInit:
    """A full RFB handshake (security None) completes."""

    async def attempt(timeout: float) -> ServerInit:
        return await rfb_handshake(t.netns, t.ip, t.rfb_port, timeout)

    result: ServerInit = await _retry(
        deadline, Hop.RFB, f"RFB handshake with {t.ip}:{t.rfb_port}", "the VNC server did not complete RFB", attempt
    )
    return result


async def wait_agent(
    t: Target, deadline: float, check: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Agent answers /health (HTTP 200) and `check` (raising ValueError while not yet) passes on its body; with a
    `check`, the agent is asked to hold its answer until it is ready (HOLD_MARGIN before the attempt's timeout)."""

    async def attempt(timeout: float) -> dict[str, Any]:
        wait = max(0.0, timeout - HOLD_MARGIN) if check is not None else 0.0
        path = f"/health?wait={wait:.2f}" if wait > 0 else "/health"
        status, body = await http_get_json(t.netns, t.ip, t.agent_port, path, timeout)
        if status != 200 or not isinstance(body, dict):
            raise ValueError(f"agent /health answered HTTP {status}")
        if check is not None:
            check(body)
        return body

    result: dict[str, Any] = await _retry(
        deadline,
        Hop.AGENT,
        f"agent at {t.ip}:{t.agent_port}",
        "check the sandbox's agent log (GET /api/auth/session/{id}/events) and `hearth doctor --session`",
        attempt,
    )
    return result


async def wait_listening(t: Target, deadline: float, exited: Callable[[], None], hint: str) -> None:
    """`hearth.sandbox.listening.wait_listening` for a target (the drivers call that one directly)."""
    await listening.wait_listening(t.netns, t.ip, t.agent_port, deadline, exited, hint)


async def wait_ready(t: Target, deadline: float, mark: Callable[[str], None]) -> str:
    """The gates of this sandbox — `agent` without a desktop, else display, vnc, rfb; returns the last stage."""
    if not t.desktop:
        await wait_agent(t, deadline)
        mark("agent")
        return "agent"
    await wait_desktop(t, deadline, mark)
    return "rfb"


async def wait_desktop(t: Target, deadline: float, mark: Callable[[str], None]) -> ServerInit:
    """The three gates in order — display, vnc, rfb — marking each as it passes; the first that times out raises."""
    await wait_display(t, deadline)
    mark("display")
    await wait_vnc(t, deadline)
    mark("vnc")
    init = await wait_rfb(t, deadline)
    mark("rfb")
    return init
