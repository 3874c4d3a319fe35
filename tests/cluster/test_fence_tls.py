"""A node cut off from the store asks its peers' /ready before fencing (hearth/cluster/fence.py); peers that serve
TLS are verified against HEARTH_NODE_CA, as edges verify them. Without it a peer's certificate would not verify, every
peer would read as unreachable, and a database outage (peers answer "no store") would fence every node. A real TLS
peer on loopback with a throwaway CA."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from hearth.cluster.fence import Fence, Verdict
from hearth.config import Settings
from tests.cluster.tlskit import make_ca


@contextlib.asynccontextmanager
async def tls_peer(tls: Path, store: str) -> AsyncIterator[str]:
    """A peer answering GET /ready with its store check `store`, over TLS with the CA's certificate for 127.0.0.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls / "peer.pem", tls / "peer.key")

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            body = json.dumps({"ok": store == "ok", "detail": {"store": store}}).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            w.write(head.encode() + body)
            await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass  # the client that does not trust the certificate hangs up during the handshake
        finally:
            w.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_a_node_verifies_tls_peers_against_the_node_ca(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "tls", {"peer": ["127.0.0.1"]})
    trusting = Fence(make_settings(HEARTH_NODE_CA=str(ca)), lambda _r: None)
    untrusting = Fence(make_settings(), lambda _r: None)
    async with tls_peer(ca.parent, "ok") as up, tls_peer(ca.parent, "unreachable: timeout") as no_store:
        assert await trusting._verdict(up) == Verdict.REACHES_STORE
        assert await trusting._verdict(no_store) == Verdict.NO_STORE  # a database outage: it keeps serving
        assert await untrusting._verdict(no_store) == Verdict.UNREACHABLE  # what it read before: it would fence
