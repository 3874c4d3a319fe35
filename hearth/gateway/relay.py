"""WebSocket ↔ RFB TCP relay.

One task per direction. Each chunk is fully written (awaiting drain / send) before the next is read, so nothing
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

from hearth.gateway.viewonly import InputFilter

CHUNK = 64 * 1024


class Ended(StrEnum):
    SANDBOX_EOF = "sandbox_eof"
    SANDBOX_ERROR = "sandbox_error"
    CLIENT_GONE = "client_gone"
    STOPPED = "stopped"


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


async def relay(
    ws: WebSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stop: asyncio.Event,
    view_only: bool = False,
    on_first_frame: Callable[[], None] | None = None,
    on_bytes: Callable[[str, int], None] | None = None,
) -> Outcome:
    """Relay until one side ends or `stop` is set; returns who ended it."""
    stats = RelayStats()
    filt = InputFilter(drop_input=view_only)
    first_frame_pending = on_first_frame is not None

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
            await ws.send_bytes(data)
            stats.to_client += len(data)
            if on_bytes is not None:
                on_bytes("to_client", len(data))
            nonlocal first_frame_pending
            if first_frame_pending and filt.saw_update_request and on_first_frame is not None:
                first_frame_pending = False
                on_first_frame()

    async def upstream() -> Outcome:
        while True:
            try:
                msg = await ws.receive()
            except WebSocketDisconnect:
                return Outcome(Ended.CLIENT_GONE, "viewer disconnected", stats)
            if msg["type"] == "websocket.disconnect":
                return Outcome(Ended.CLIENT_GONE, "viewer disconnected", stats)
            data = msg.get("bytes")
            if data is None:
                text = msg.get("text")
                data = text.encode("latin-1", "replace") if isinstance(text, str) else b""
            kept = filt.feed(data)
            stats.dropped_input += len(data) - len(kept)
            data = kept
            if not data:
                continue
            writer.write(data)
            try:
                await asyncio.wait_for(writer.drain(), 30)
            except (ConnectionResetError, BrokenPipeError):  # the VNC server closed this connection
                return Outcome(Ended.SANDBOX_EOF, "the sandbox closed the VNC connection", stats)
            except (OSError, TimeoutError) as exc:
                return Outcome(Ended.SANDBOX_ERROR, f"writing to sandbox failed: {type(exc).__name__}", stats)
            stats.to_sandbox += len(data)
            if on_bytes is not None:
                on_bytes("to_sandbox", len(data))

    async def stopped() -> Outcome:
        await stop.wait()
        return Outcome(Ended.STOPPED, "session ended", stats)

    tasks = [asyncio.create_task(c) for c in (downstream(), upstream(), stopped())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done))
        exc = first.exception()
        if exc is not None:
            if isinstance(exc, WebSocketDisconnect | RuntimeError):
                return Outcome(Ended.CLIENT_GONE, "viewer disconnected", stats)
            raise exc
        return first.result()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)
