"""Standby connections: an RFB connection to each warm-pool desktop, made while the sandbox waits in the pool.

A warm-pool sandbox's desktop is up long before anyone asks for it. As the last step of its refill the pool dials
the sandbox's VNC server and does the RFB handshake (`hold`); the connection then waits, asking for nothing (a VNC
server sends no framebuffer update nobody requested). The gateway hands it to the first viewer of the session the
sandbox is handed to (`take`, hearth/gateway/routes.py) instead of dialling: its ServerInit goes out as soon as the
viewer's own handshake is done, and the hand-over's critical path holds no dial and no sandbox handshake.

Keyed by the desktop's address (a pure function of the slot). A held connection is only ever to the VNC server
listening there now: when that sandbox ends its server closes the connection and the entry goes with it, so a slot
given to another sandbox never finds an old one (and `take` refuses a connection that is closing). A dial or
handshake that fails is logged and forgotten — the viewer then dials as usual (hearth/gateway/routes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hearth.fabric.dial import open_protocol
from hearth.lifecycle.readiness import Target
from hearth.rfb.client import RfbError, ServerInit, handshake
from hearth.rfb.stream import SandboxStream

log = logging.getLogger("hearth.pool")

DIAL_TIMEOUT = 5.0  # seconds, as the gateway's own dial
HANDSHAKE_TIMEOUT = 5.0  # seconds; a slower VNC server is left to the route's path (its own, longer bound)


class Standby:
    """Held RFB connections to warm-pool desktops, by address (see the module docstring)."""

    def __init__(self, dial_timeout: float = DIAL_TIMEOUT, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.dial_timeout = dial_timeout
        self.handshake_timeout = handshake_timeout
        self._held: dict[Target, tuple[SandboxStream, ServerInit]] = {}
        self._closed = False

    def holds(self, target: Target) -> bool:
        """Whether a connection to `target` waits here, open."""
        got = self._held.get(target)
        return got is not None and not got[0].closing

    async def hold(self, target: Target) -> bool:
        """Dial `target`'s VNC server and do the RFB handshake; keep the connection for `take`. False (logged) when
        the desktop could not be reached or did not answer in time: nothing is kept, nothing raised."""
        if self._closed or not target.desktop or self.holds(target):
            return False
        try:
            sandbox = await open_protocol(target.netns, target.ip, target.rfb_port, self.dial_timeout, SandboxStream)
        except (OSError, TimeoutError) as exc:
            log.info("standby dial to %s:%s failed: %s", target.ip, target.rfb_port, type(exc).__name__)
            return False
        try:
            init = await asyncio.wait_for(handshake(sandbox.readexactly, sandbox.write), self.handshake_timeout)
        except (RfbError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("standby RFB handshake with %s:%s failed: %s", target.ip, target.rfb_port, type(exc).__name__)
            await sandbox.close()
            return False
        except BaseException:
            await sandbox.close()
            raise
        if self._closed:  # closed while this dial was under way
            await sandbox.close()
            return False
        stale = self._held.pop(target, None)
        if stale is not None:
            await stale[0].close()
        self._held[target] = (sandbox, init)
        sandbox.ended.add_done_callback(lambda _: self._forget(target, sandbox))
        return True

    def take(self, target: Target) -> tuple[SandboxStream, ServerInit] | None:
        """The connection held to `target` and its ServerInit, now the caller's (to relay and to close); None when
        none is held or it is closing (the caller dials as usual)."""
        got = self._held.pop(target, None)
        if got is None:
            return None
        if got[0].closing:
            _shut(got[0])
            return None
        return got

    def __len__(self) -> int:
        return len(self._held)

    async def close(self) -> None:
        """Close every held connection (the controller stops); `hold` keeps nothing from now on."""
        self._closed = True
        held, self._held = list(self._held.values()), {}
        for sandbox, _ in held:
            with contextlib.suppress(Exception):
                await sandbox.close()

    def _forget(self, target: Target, sandbox: SandboxStream) -> None:
        """The held connection ended (its sandbox went): drop it, unless another one replaced it."""
        got = self._held.get(target)
        if got is not None and got[0] is sandbox:
            del self._held[target]
        _shut(sandbox)


def _shut(sandbox: SandboxStream) -> None:
    """Close a connection that is ending anyway (nothing to wait for: its end is already under way or done)."""
    if sandbox.transport is not None:
        sandbox.transport.close()
