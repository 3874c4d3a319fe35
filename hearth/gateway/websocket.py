"""The viewer's WebSocket: uvicorn's sans-I/O protocol, plus a splice for the relay's hot path.

Stock uvicorn hands each WebSocket message to the application through a queue and a task switch, pauses and
resumes reading the socket around it, and takes each sent message through an awaited ASGI call. Per 64-byte input
event and per framebuffer chunk that costs more than the copy. Once both RFB handshakes are done the relay
*splices* (hearth/gateway/relay.py): from then on this protocol hands each viewer message to a callback from
`data_received`, and the relay writes sandbox bytes into the WebSocket from the sandbox socket's own
`data_received` (`send_now`) — no queue, task or await per message, in either direction. Pings, closes and the
disconnect keep uvicorn's path (the disconnect still arrives through `receive()`).

Backpressure crosses over: when the viewer's socket cannot take more, `on_writable(False)` tells the relay to stop
reading the sandbox; when the sandbox cannot take more input, the relay holds this socket's reading (`hold`). And a
viewer that does not read what it is sent is not read either, handshake or not: its pings would otherwise pile up
their pongs in the gateway's memory without bound.

Offered to the application as the ASGI scope extension `hearth.splice` (uvicorn.Config(ws=GatewayWebSocket)).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

SPLICE = "hearth.splice"  # the ASGI scope extension's key


def message_bytes(message: Mapping[str, Any]) -> bytes:
    """A `websocket.receive` message's payload as bytes (a text frame as Latin-1, as websockify relays it)."""
    data = message.get("bytes")
    if data is None:
        text = message.get("text")
        return text.encode("latin-1", "replace") if isinstance(text, str) else b""
    return data if isinstance(data, bytes) else bytes(data)


def frame_header(length: int) -> bytes:
    """The header of a final, unmasked binary frame of `length` payload bytes (RFC 6455 §5.2)."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


class Splice(Protocol):
    """What the relay needs of the viewer's connection once the handshakes are done."""

    def splice(self, on_message: Callable[[bytes], None], on_writable: Callable[[bool], None]) -> list[bytes]: ...
    def send_now(self, data: bytes) -> None: ...
    def hold(self, held: bool) -> None: ...
    def unsplice(self) -> None: ...


class GatewayWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with `hearth.splice` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message: Callable[[bytes], None] | None = None
        self._on_writable: Callable[[bool], None] | None = None
        self._held = False  # the relay holds this socket's reading: the sandbox takes no input
        self._unread = False  # the viewer does not read what it is sent (the transport paused writing)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # set only when the upgrade went ahead
        if scope is not None:
            scope["extensions"][SPLICE] = self

    # --- the splice ---------------------------------------------------------------------------------------------
    def splice(self, on_message: Callable[[bytes], None], on_writable: Callable[[bool], None]) -> list[bytes]:
        """From now on each viewer message goes to `on_message` as it arrives; returns, in order, the messages that
        arrived before and were not yet received. A disconnect stays queued for `receive()`."""
        taken: list[bytes] = []
        kept = []
        while not self.queue.empty():
            message = self.queue.get_nowait()
            if message["type"] == "websocket.receive":
                taken.append(message_bytes(message))
            else:
                kept.append(message)
        for message in kept:
            self.queue.put_nowait(message)
        self._on_message, self._on_writable = on_message, on_writable
        self.read_paused = False  # uvicorn pauses reading until its queue is taken: it has been
        self._sync_reading()
        return taken

    def unsplice(self) -> None:
        """Back to uvicorn's own path (before the relay closes the WebSocket), reading no longer held."""
        self._on_message = self._on_writable = None
        self.hold(False)

    def send_now(self, data: bytes) -> None:
        """Send one binary message now; after a close or disconnect it is dropped (the relay learns of the end
        through `receive()`). Without extensions a server's frame is a header and the payload as it is (RFC 6455
        §5.2: unmasked), so the two go out in one vectored write, the payload uncopied."""
        if self.close_sent or self.disconnected or self.conn.state is not State.OPEN:
            return
        if self.conn.extensions:  # e.g. permessage-deflate: the library frames it
            self.conn.send_binary(data)
            self.transport.write(b"".join(self.conn.data_to_send()))
            return
        self.transport.writelines((frame_header(len(data)), data))

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) reading the viewer's socket: the sandbox is not taking its input."""
        if held != self._held:
            self._held = held
            self._sync_reading()

    def _sync_reading(self) -> None:
        """Read the socket unless uvicorn's queue waits to be taken, the relay holds it, or the viewer reads
        nothing (pause and resume are idempotent, so this is called on each change, never per message)."""
        if self.disconnected or self.close_sent or self.transport.is_closing():
            return
        if self.read_paused or self._held or self._unread:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # --- uvicorn's hooks, spliced -------------------------------------------------------------------------------
    def send_receive_event_to_app(self) -> None:
        deliver = self._on_message
        if deliver is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type == "text":
            try:
                text = bytes(data).decode()
            except UnicodeDecodeError:  # as uvicorn does: close 1007 (hearth.log demotes its log line)
                self.logger.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            deliver(text.encode("latin-1", "replace"))
        else:
            deliver(data if isinstance(data, bytes) else bytes(data))

    async def receive(self) -> ASGIReceiveEvent:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():  # as uvicorn's, but reading stays held when it should be
            self.read_paused = False
            self._sync_reading()
        return message

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writable(False)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writable(True)

    def _writable(self, writable: bool) -> None:
        """The viewer stopped (False) or resumed taking output: hold our reading of it, and tell the relay."""
        self._unread = not writable
        self._sync_reading()
        if self._on_writable is not None:
            self._on_writable(writable)
