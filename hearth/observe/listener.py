"""HEARTH_METRICS_LISTEN: Prometheus `/metrics` on a listener of its own, without authentication (the API port serves
it only with an API key). A minimal HTTP/1.1 responder — GET /metrics, one request per connection — so it shares
nothing with the API server (no routes, no keys); bind it to a private address (127.0.0.1, the pod IP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hearth.errors import HearthError, Hop

log = logging.getLogger("hearth.metrics")
READ_TIMEOUT = 5.0  # seconds for a scraper to send its request head
MAX_HEAD = 8192  # bytes of request line + headers


async def serve_metrics(listen: str, render: Callable[[], bytes]) -> asyncio.Server:
    """Start the listener on `listen` (HOST:PORT); HearthError naming the setting when it cannot be bound."""
    host, _, port = listen.rpartition(":")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method not in ("GET", "HEAD") or path != "/metrics":
                status, ctype, body = "404 Not Found", "text/plain", b"only GET /metrics here\n"
            else:
                status, ctype, body = "200 OK", "text/plain; version=0.0.4", await asyncio.to_thread(render)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
                + (body if method != "HEAD" else b"")
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    try:
        server = await asyncio.start_server(answer, host.strip("[]") or "127.0.0.1", int(port), limit=MAX_HEAD)
    except OSError as exc:
        raise HearthError(
            Hop.CONFIG,
            f"HEARTH_METRICS_LISTEN {listen} cannot be bound ({exc.strerror or exc})",
            "set HEARTH_METRICS_LISTEN to a free address of this host (e.g. 127.0.0.1:9400), or leave it empty",
        ) from exc
    log.info("metrics listening", extra={"listen": listen})
    return server
