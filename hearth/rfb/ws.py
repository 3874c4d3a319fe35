"""RFB over the gateway's WebSocket (client side): used by the demo, the benchmark, the doctor and tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect

from hearth.rfb.client import Rect, ServerInit, handshake, request_frame


class WsByteStream:
    """Exact-size reads over WebSocket binary messages."""

    def __init__(self, ws: ClientConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self._buf = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            msg = await asyncio.wait_for(self.ws.recv(), self.timeout)
            self._buf += msg if isinstance(msg, bytes) else msg.encode("latin-1")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def write(self, data: bytes) -> None:
        await asyncio.wait_for(self.ws.send(data), self.timeout)


@dataclass(frozen=True)
class FirstFrame:
    init: ServerInit
    rects: list[Rect]
    connect_s: float
    handshake_s: float
    frame_s: float

    @property
    def non_blank(self) -> bool:
        return any(r.non_blank() for r in self.rects)


async def first_frame(url: str, timeout: float = 30.0) -> FirstFrame:
    """Open the viewer WebSocket, complete RFB, and fetch one full framebuffer update."""
    t0 = time.monotonic()
    async with connect(url, subprotocols=["binary"], open_timeout=timeout, max_size=None) as ws:  # type: ignore[list-item]
        t1 = time.monotonic()
        stream = WsByteStream(ws, timeout)
        init = await handshake(stream.read, stream.write)
        t2 = time.monotonic()
        rects = await request_frame(stream.read, stream.write, init)
        t3 = time.monotonic()
    return FirstFrame(init, rects, t1 - t0, t2 - t0, t3 - t0)
