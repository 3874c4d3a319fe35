"""The edge's viewer WebSocket: relay frames between the viewer and the node's gateway, unchanged both ways.

The node's gateway does everything else (token, RFB termination, view-only); its close code and reason are passed
through. When the node connection drops without a close (the node died, its network broke: pings go unanswered) the
viewer gets 4502 naming the node, so the viewer page reconnects — through any edge — and lands on the same session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable

from fastapi import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from hearth.gateway.routes import UNREACHABLE, close_reason

log = logging.getLogger("hearth.edge")
CONNECT_TIMEOUT = 10.0
# The edge pings the node's leg: a node whose link is cut sends no close, so without pings the viewer would hang
# until its own keepalive gave up. Missing pongs close the viewer with 4502 naming the node within about 6 s (ping,
# its timeout, and the bound on the closing handshake the dead link cannot complete).
PING_INTERVAL, PING_TIMEOUT, CLOSE_TIMEOUT = 1.5, 2.5, 1.5


def ws_url(address: str, session_id: str, token: str) -> str:
    base = address.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")
    return f"{base}/api/auth/session/{session_id}/novnc/websock?token={token}"


async def relay_viewer(
    ws: WebSocket,
    node_id: str,
    address: str,
    session_id: str,
    token: str,
    down: Callable[[], Awaitable[str | None]],
    tls: ssl.SSLContext | None = None,
) -> tuple[int, str]:
    """Relay until either side closes; returns the (code, reason) the viewer was closed with. `down()` says why the
    node is gone (None when the store still calls it alive) for the 4502 reason."""

    async def lost(what: str) -> tuple[int, str]:
        why = await down()
        return UNREACHABLE, close_reason(f"[node] node {node_id} {why or what} — reconnect")

    try:
        upstream = await asyncio.wait_for(
            connect(
                ws_url(address, session_id, token),
                subprotocols=[Subprotocol("binary")],
                ssl=tls if address.startswith("https://") else None,  # a TLS node: verified against HEARTH_NODE_CA
                max_size=4 * 1024 * 1024,
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=PING_INTERVAL,  # the node pings this leg too; the edge pings its viewer
                ping_timeout=PING_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                compression=None,
            ),
            CONNECT_TIMEOUT,
        )
    except InvalidStatus as exc:
        return await _close(ws, UNREACHABLE, f"[node] node {node_id} refused the viewer ({exc.response.status_code})")
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        return await _close(ws, *(await lost(f"unreachable: {type(exc).__name__}")))
    async with upstream:
        return await _pump(ws, upstream, lost)


async def _pump(
    ws: WebSocket, up: ClientConnection, lost: Callable[[str], Awaitable[tuple[int, str]]]
) -> tuple[int, str]:
    async def down_to_viewer() -> tuple[int, str]:
        try:
            async for msg in up:
                if isinstance(msg, bytes):
                    await ws.send_bytes(msg)
                else:
                    await ws.send_text(msg)
        except ConnectionClosed:
            pass
        rcvd = up.protocol.close_rcvd
        if rcvd is None:  # no close frame: the node went away
            return await lost("connection lost")
        return rcvd.code, rcvd.reason

    async def viewer_to_node() -> tuple[int, str]:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return int(msg.get("code", 1000)), "viewer left"
            data = msg.get("bytes")
            with contextlib.suppress(ConnectionClosed):
                await up.send(data if data is not None else msg.get("text", ""))

    tasks = [asyncio.ensure_future(down_to_viewer()), asyncio.ensure_future(viewer_to_node())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    code, reason = next(iter(done)).result()
    if tasks[1] in done:  # the viewer left: tell the node
        with contextlib.suppress(Exception):
            await up.close(1000, "viewer left")
        return code, reason
    return await _close(ws, code, reason)


async def _close(ws: WebSocket, code: int, reason: str) -> tuple[int, str]:
    log.info("edge viewer closed", extra={"code": code, "close_reason": reason})
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.close(code, close_reason(reason))
    return code, reason
