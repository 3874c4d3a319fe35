"""WebSocket ↔ RFB TCP relay.

First the gateway completes the RFB handshake with the sandbox and, separately, with the viewer
(hearth/gateway/handshake.py), so the viewer's messages are framed from a known boundary whatever version it chose.
Then one task per direction. Each chunk is fully written (awaiting drain / send) before the next is read, so nothing
queued is lost when either side closes first; TCP_NODELAY is set on the sandbox side. The outcome says who ended
the relay so the route can send the right close code (1000 on sandbox EOF, never a silent drop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from starlette.websockets import WebSocket, WebSocketDisconnect

from hearth.gateway.handshake import ViewerHandshakeError, serve_viewer
from hearth.gateway.viewonly import InputFilter, ViewOnlyViolation
from hearth.rfb.client import RfbError, handshake

CHUNK = 64 * 1024
REPORT_EVERY = 1.0  # seconds between byte-counter reports
HIGH_WATER = 64 * 1024  # upstream: wait for the sandbox to take its input only beyond this much queued
HANDSHAKE_TIMEOUT = 30.0  # each side's RFB handshake


class Ended(StrEnum):
    SANDBOX_EOF = "sandbox_eof"
    SANDBOX_ERROR = "sandbox_error"
    CLIENT_GONE = "client_gone"
    STOPPED = "stopped"
    BAD_VIEWER = "bad_viewer"  # the viewer's RFB handshake was not RFB
    VIEW_ONLY = "view_only"  # a view-scope viewer sent a message type that cannot be framed


@dataclass
class RelayStats:
    to_client: int = 0
    to_sandbox: int = 0
    dropped_input: int = 0


@dataclass(frozen=True)
class Outcome:
    ended: Ended
    detail: str
    stats: RelayStats


class _ViewerGone(Exception):
    pass


class _Viewer:
    """The viewer's WebSocket as a byte stream: whole messages for the relay, exact reads for the handshake."""

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
        data = msg.get("bytes")
        if data is None:
            text = msg.get("text")
            return text.encode("latin-1", "replace") if isinstance(text, str) else b""
        return data if isinstance(data, bytes) else bytes(data)

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self.message()
            if data is None:
                raise _ViewerGone
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


async def relay(
    ws: WebSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stop: asyncio.Event,
    view_only: bool = False,
    on_first_frame: Callable[[], None] | None = None,
    on_bytes: Callable[[str, int], None] | None = None,
    on_sandbox_handshake: Callable[[], None] | None = None,
) -> Outcome:
    """Relay until one side ends or `stop` is set; returns who ended it. `on_sandbox_handshake` is called once the
    sandbox's RFB handshake is done (the route serialises dials to one sandbox until then)."""
    try:
        return await _relay(ws, reader, writer, stop, view_only, on_first_frame, on_bytes, on_sandbox_handshake)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


async def _relay(
    ws: WebSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stop: asyncio.Event,
    view_only: bool,
    on_first_frame: Callable[[], None] | None,
    on_bytes: Callable[[str, int], None] | None,
    on_sandbox_handshake: Callable[[], None] | None = None,
) -> Outcome:
    stats = RelayStats()
    filt = InputFilter(drop_input=view_only)
    first_frame_pending = on_first_frame is not None
    viewer = _Viewer(ws)

    async def sandbox_read(n: int) -> bytes:
        return await reader.readexactly(n)

    async def sandbox_write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def handshakes() -> Outcome | None:
        """Both sides' RFB handshakes; None when done, else why the relay ends before it began."""
        try:
            init = await asyncio.wait_for(handshake(sandbox_read, sandbox_write), HANDSHAKE_TIMEOUT)
        except (RfbError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            detail = f"RFB handshake with the sandbox failed: {type(exc).__name__} {exc}"
            return Outcome(Ended.SANDBOX_ERROR, detail, stats)
        if on_sandbox_handshake is not None:
            on_sandbox_handshake()
        try:
            await asyncio.wait_for(serve_viewer(viewer.read, ws.send_bytes, init.raw), HANDSHAKE_TIMEOUT)
        except ViewerHandshakeError as exc:
            return Outcome(Ended.BAD_VIEWER, str(exc), stats)
        except TimeoutError:
            return Outcome(Ended.BAD_VIEWER, f"no RFB handshake from the viewer within {HANDSHAKE_TIMEOUT:.0f}s", stats)
        except (_ViewerGone, WebSocketDisconnect, RuntimeError):
            return Outcome(Ended.CLIENT_GONE, "viewer disconnected during the RFB handshake", stats)
        return None

    setup = asyncio.create_task(handshakes())
    ended = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((setup, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (setup, ended):
            t.cancel()
        for t in (setup, ended):
            with contextlib.suppress(BaseException):
                await t
    if setup.cancelled():  # the session ended while the handshakes were under way
        return Outcome(Ended.STOPPED, "session ended", stats)
    early = setup.result()  # (re-raises anything unexpected)
    if early is not None:
        return early
    pending = bytes(viewer.buf)  # what the viewer sent after its ClientInit

    send = ws.send  # the ASGI message itself: one call fewer per message than send_bytes

    async def downstream() -> Outcome:
        while True:
            try:
                data = await reader.read(CHUNK)
            except ConnectionResetError:  # the VNC server closed with unread input (e.g. a viewer's garbage)
                return Outcome(Ended.SANDBOX_EOF, "the sandbox reset the VNC connection", stats)
            except OSError as exc:
                return Outcome(Ended.SANDBOX_ERROR, f"{type(exc).__name__}: {exc}", stats)
            if not data:
                return Outcome(Ended.SANDBOX_EOF, "the sandbox closed the VNC connection", stats)
            await send({"type": "websocket.send", "bytes": data})
            stats.to_client += len(data)
            nonlocal first_frame_pending
            if first_frame_pending and filt.saw_update_request and on_first_frame is not None:
                first_frame_pending = False
                on_first_frame()

    transport = writer.transport

    async def upstream() -> Outcome:
        nonlocal pending
        while True:
            if pending:
                data, pending = pending, b""
            else:
                got = await viewer.message()
                if got is None:
                    return Outcome(Ended.CLIENT_GONE, "viewer disconnected", stats)
                data = got
            try:
                kept = filt.feed(data)
            except ViewOnlyViolation as exc:
                return Outcome(Ended.VIEW_ONLY, str(exc), stats)
            stats.dropped_input += len(data) - len(kept)
            data = kept
            if not data:
                continue
            if transport.is_closing():  # the VNC server closed this connection
                return Outcome(Ended.SANDBOX_EOF, "the sandbox closed the VNC connection", stats)
            writer.write(data)
            if transport.get_write_buffer_size() > HIGH_WATER:  # else nothing to wait for: no timer per message
                try:
                    await asyncio.wait_for(writer.drain(), 30)
                except (ConnectionResetError, BrokenPipeError):  # the VNC server closed this connection
                    return Outcome(Ended.SANDBOX_EOF, "the sandbox closed the VNC connection", stats)
                except (OSError, TimeoutError) as exc:
                    return Outcome(Ended.SANDBOX_ERROR, f"writing to sandbox failed: {type(exc).__name__}", stats)
            stats.to_sandbox += len(data)

    reported = {"to_client": 0, "to_sandbox": 0}

    def report() -> None:
        """Byte counters go to `on_bytes` once a second and at the end, not per message."""
        if on_bytes is None:
            return
        for name, total in (("to_client", stats.to_client), ("to_sandbox", stats.to_sandbox)):
            if total > reported[name]:
                on_bytes(name, total - reported[name])
                reported[name] = total

    async def stopped() -> Outcome:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_EVERY)
            report()
        return Outcome(Ended.STOPPED, "session ended", stats)

    tasks = [asyncio.create_task(c) for c in (downstream(), upstream(), stopped())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done))
        failure = first.exception()
        if failure is not None:
            if isinstance(failure, WebSocketDisconnect | RuntimeError):
                return Outcome(Ended.CLIENT_GONE, "viewer disconnected", stats)
            raise failure
        return first.result()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        report()
