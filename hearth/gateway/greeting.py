"""The viewer's side of the RFB handshake, before the relay (hearth/gateway/relay.py).

The viewer's handshake up to its ClientInit needs nothing of the sandbox: it is a `Greeting`, which the route starts
as soon as the session is known to be one with a desktop — while the session boots, the sandbox is dialled and its
own handshake done — so only the sandbox's ServerInit is left to send once that is known. `Viewer` reads the
viewer's WebSocket as a byte stream for it (exact reads over whole messages); what the viewer sent after its
ClientInit stays in its buffer for the relay to forward first.
"""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocket, WebSocketDisconnect

from hearth.gateway.handshake import greet_viewer
from hearth.gateway.websocket import message_bytes


class ViewerGone(Exception):
    pass


class Viewer:
    """The viewer's WebSocket as a byte stream for the handshake: exact reads over whole messages."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.buf = bytearray()

    async def message(self) -> bytes | None:
        """The next message's bytes; None when the viewer has gone."""
        try:
            msg = await self.ws.receive()
        except WebSocketDisconnect:
            return None
        if msg["type"] == "websocket.disconnect":
            return None
        return message_bytes(msg)

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self.message()
            if data is None:
                raise ViewerGone
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Greeting:
    """The viewer's RFB handshake up to its ClientInit, under way from construction (on the running loop).
    `finish` sends the sandbox's ServerInit once the greeting is done; `cancel` stops it (before the route closes
    the viewer for another reason)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.viewer = Viewer(ws)
        self._task = asyncio.create_task(greet_viewer(self.viewer.read, ws.send_bytes), name="viewer-greeting")

    async def finish(self, server_init: bytes, timeout: float) -> None:
        """Wait (at most `timeout` from now) for the viewer's ClientInit, then send it `server_init`. Raises
        ViewerHandshakeError, TimeoutError, or ViewerGone / WebSocketDisconnect / RuntimeError (the viewer left)."""
        await asyncio.wait_for(self._task, timeout)
        await self.ws.send_bytes(server_init)

    async def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()
        try:
            await self._task  # its outcome no longer matters (and is not logged as lost)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller itself is being cancelled: not the greeting's to swallow
        except Exception:
            pass
