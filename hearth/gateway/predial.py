"""Dialling a warm-pool desktop before its session is ready.

A session handed a warm-pool sandbox (hearth/session/boots.py) has its desktop up from its admission on: only the
agent's personalisation and the move to READY are left. Meanwhile the gateway may already dial the sandbox's VNC
server and do its RFB handshake (`Predial`), so once the session is ready the viewer gets the ServerInit at once.
Nothing but the handshake is exchanged before ready, and the route looks at the result only where it would have
dialled: a predial that failed, or a session that did not become ready, changes nothing (the ordinary dial then runs,
or the route closes as before, and the unused connection is closed). Usually the gateway already holds a connection
to a pooled desktop, made while it waited in the pool (hearth/session/standby.py), and no predial is needed: this
covers the desktops without one (adopted after a restart, or whose standby dial failed).
"""

from __future__ import annotations

import asyncio
import contextlib

from hearth.fabric.dial import open_protocol
from hearth.lifecycle.readiness import Target
from hearth.rfb.client import ServerInit, handshake
from hearth.rfb.stream import SandboxStream

DIAL_TIMEOUT = 5.0  # seconds, as the ordinary dial
PREDIAL_HANDSHAKE = 5.0  # seconds; a slower VNC server is left to the ordinary path (its own, longer bound)


class Predial:
    """A dial and RFB handshake with `target`'s VNC server, under way from construction (on the running loop),
    holding a place of the sandbox's dial gate until the handshake is done (as the ordinary dial does)."""

    def __init__(self, target: Target, gate: asyncio.Semaphore) -> None:
        self.target = target
        self._taken = False
        self._task = asyncio.create_task(self._dial(gate), name="viewer-predial")

    async def _dial(self, gate: asyncio.Semaphore) -> tuple[SandboxStream, ServerInit]:
        t = self.target
        async with gate:
            sandbox = await open_protocol(t.netns, t.ip, t.rfb_port, DIAL_TIMEOUT, SandboxStream)
            try:
                init = await asyncio.wait_for(handshake(sandbox.readexactly, sandbox.write), PREDIAL_HANDSHAKE)
            except BaseException:
                await sandbox.close()
                raise
        return sandbox, init

    async def take(self, target: Target) -> tuple[SandboxStream, ServerInit] | None:
        """The connection and its ServerInit when the predial reached `target` (the session's, now it is ready;
        waiting for a predial still under way, within its bounds); None otherwise: the caller dials as usual."""
        if target != self.target:
            await self.cancel()
            return None
        try:
            got = await self._task
        except Exception:
            return None
        self._taken = True
        return got

    async def cancel(self) -> None:
        """Stop the predial; its connection, if it made one nobody took, is closed."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            sandbox, _ = await self._task
            if not self._taken:
                await sandbox.close()
