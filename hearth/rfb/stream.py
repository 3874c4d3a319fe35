"""A TCP connection to a sandbox's VNC server, as the gateway relays it (and the warm pool holds one ahead:
hearth/session/standby.py).

Exact reads while the RFB handshake is done (hearth/rfb/client.py), then a splice: each chunk the VNC
server sends goes to the relay's callback straight from `data_received` (no reader task, no buffer). `ended`
resolves when the connection ends — None on the server's EOF, else the error — and `on_writable` reports when the
server stops or starts taking input again (the relay then holds or resumes the viewer's reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
from collections.abc import Callable
from typing import cast

HANDSHAKE_BUFFER = 1 << 20  # bytes buffered before the splice; beyond it, reading waits for the handshake
HIGH_WATER = 64 * 1024  # bytes queued towards the VNC server before it counts as not taking input
SIOCOUTQNSD = 0x894B  # Linux: bytes in a TCP socket's send queue not yet sent


def _ignore(_: object) -> None:
    pass


class SandboxStream(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[BaseException | None] = loop.create_future()
        self._loop = loop
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._on_writable: Callable[[bool], None] = _ignore
        self._paused = False

    # --- asyncio.Protocol -------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are not asyncio.Transport subclasses)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._buf += data
        if len(self._buf) > HANDSHAKE_BUFFER:
            self.hold(True)
        self._wake()

    def eof_received(self) -> bool:
        self._end(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    def pause_writing(self) -> None:
        self._on_writable(False)

    def resume_writing(self) -> None:
        self._on_writable(True)

    # --- the handshake ----------------------------------------------------------------------------------------
    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes; asyncio.IncompleteReadError when the connection ended first."""
        while len(self._buf) < n:
            if self.ended.done():
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        if len(self._buf) <= HANDSHAKE_BUFFER:
            self.hold(False)
        return out

    async def write(self, data: bytes) -> None:
        """Queue `data` for the VNC server (RFB handshake writes are a few bytes: nothing to wait for)."""
        if self.closing:
            raise ConnectionResetError("the sandbox closed the VNC connection")
        assert self.transport is not None
        self.transport.write(data)

    # --- the splice -------------------------------------------------------------------------------------------
    def splice(self, sink: Callable[[bytes], None], on_writable: Callable[[bool], None]) -> bytes:
        """From now on every chunk goes to `sink` as it arrives; returns what arrived before and was not read."""
        rest, self._buf = bytes(self._buf), bytearray()
        self._sink, self._on_writable = sink, on_writable
        self.hold(False)
        return rest

    def send_now(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def drained(self) -> bool:
        """Whether everything written so far has left for the VNC server: nothing queued here or unsent in the
        kernel, so that the next write starts a TCP segment of its own."""
        if self.transport is None or self.transport.get_write_buffer_size():
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            unsent = fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, struct.pack("i", 0))
        except OSError:
            return True  # not a TCP socket here (tests): nothing to wait for
        return bool(struct.unpack("i", unsent)[0] == 0)

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) reading from the VNC server: the viewer is not taking what it sends."""
        if held == self._paused or self.transport is None or self.ended.done():
            return
        self._paused = held
        if held:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing() or self.ended.done()

    async def close(self, timeout: float = 2.0) -> None:
        """Close and wait (bounded) until the connection is gone."""
        self._sink, self._on_writable = None, _ignore
        if self.transport is not None:
            self.transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.ended), timeout)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _end(self, exc: BaseException | None) -> None:
        if not self.ended.done():
            self.ended.set_result(exc)
        self._wake()
