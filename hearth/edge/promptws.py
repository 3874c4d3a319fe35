"""The edge's prompt WebSocket: `/api/prompts/{id}/stream` relayed to the node that runs the prompt, unchanged.

The caller's API key is checked here when the edge has a node credential (HEARTH_NODE_CREDENTIAL) and the node gets
the credential in its place (signed as a GET of the stream's path); without one the caller's key is passed on, as
for the HTTP routes. The node's close code and reason are passed through (4401, 4404, a normal close after `end`);
a node that goes away without a close (pings go unanswered) closes the client with 4502 naming it, so the client
reconnects with `last_event_id` and misses nothing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from fastapi import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from hearth.api.auth import ApiKeys
from hearth.cluster.credential import HEADER as EDGE_HEADER
from hearth.cluster.credential import NodeCredential
from hearth.edge.wsrelay import CLOSE_TIMEOUT, CONNECT_TIMEOUT, PING_INTERVAL, PING_TIMEOUT, _close, _pump
from hearth.gateway.routes import UNREACHABLE, close_reason

UNAUTHORISED = 4401


def prompt_ws_url(address: str, prompt_id: str, query: dict[str, str]) -> str:
    base = address.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")
    return f"{base}/api/prompts/{prompt_id}/stream" + (f"?{urlencode(query)}" if query else "")


def upstream_headers(ws: WebSocket, keys: ApiKeys, credential: NodeCredential | None, path: str) -> dict[str, str]:
    """What the edge sends the node: the node credential for this path, else the caller's Authorization.
    Raises PermissionError when the edge has a credential and the caller's API key is wrong or missing."""
    if credential is None:
        auth = ws.headers.get("authorization")
        return {"authorization": auth} if auth else {}
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value or not keys.check(value.strip()):
        raise PermissionError("missing or invalid API key")
    return {EDGE_HEADER: credential.present("GET", path)}


async def relay_prompt(
    ws: WebSocket,
    node_id: str,
    address: str,
    prompt_id: str,
    headers: dict[str, str],
    down: Callable[[], Awaitable[str | None]],
    tls: ssl.SSLContext | None = None,
) -> tuple[int, str]:
    """Relay the node's prompt stream to `ws` (not yet accepted) until either side closes; returns (code, reason).
    A node that refuses the stream (wrong key, unknown prompt: it closes before accepting) is answered the same way:
    the client's handshake is refused; an unreachable node is named in a 4502 close."""

    async def lost(what: str) -> tuple[int, str]:
        why = await down()
        return UNREACHABLE, close_reason(f"[node] node {node_id} {why or what} — reconnect with last_event_id")

    query = {k: v for k, v in ws.query_params.items() if k in ("raw", "last_event_id")}
    try:
        upstream = await asyncio.wait_for(
            connect(
                prompt_ws_url(address, prompt_id, query),
                additional_headers=headers,
                ssl=tls if address.startswith("https://") else None,  # a TLS node: verified against HEARTH_NODE_CA
                max_size=4 * 1024 * 1024,
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
            ),
            CONNECT_TIMEOUT,
        )
    except InvalidStatus as exc:
        return await _close(ws, UNREACHABLE, f"[node] node {node_id} refused the stream ({exc.response.status_code})")
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        await ws.accept()
        return await _close(ws, *(await lost(f"unreachable: {type(exc).__name__}")))
    async with upstream:
        await ws.accept()
        return await _pump(ws, upstream, lost)
