"""Run the controller: uvicorn with gateway pings below proxy idle timeouts."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import FastAPI

from hearth.cluster.pidns import sandboxes_die_with_me
from hearth.config import Settings
from hearth.errors import HearthError, Hop
from hearth.gateway.websocket import GatewayWebSocket
from hearth.log import install_redaction

log = logging.getLogger("hearth.serve")
DRAIN_TIMEOUT = 5.0  # seconds for viewers to take their 4503 close on a graceful shutdown


def check_listen(settings: Settings) -> None:
    """Fail before anything is built when HEARTH_API_LISTEN cannot be bound (in use, or not an address of this
    host): uvicorn would otherwise find out after the fabric is up and exit with a bare errno."""
    host, port = settings.listen_host_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = "is in use by another process" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
            raise HearthError(
                Hop.CONFIG,
                f"HEARTH_API_LISTEN {host}:{port} {why}",
                "stop the other process (ss -ltnp) or set HEARTH_API_LISTEN to a free address of this host",
            ) from exc


async def serve_until_stopped(srv: uvicorn.Server) -> None:
    """`srv.serve()` with uvicorn's startup `sys.exit` turned into an error the caller can handle (a SystemExit
    escaping a task would stop the whole event loop)."""
    try:
        await srv.serve()
    except SystemExit as exc:
        raise RuntimeError(f"the API server stopped during startup (exit {exc.code}); see the log above") from None


class Server(uvicorn.Server):
    """uvicorn, but a graceful shutdown first closes every viewer itself — 4503 "controller shutting down —
    reconnect" — instead of leaving them to uvicorn's bare 1012, then shuts down as uvicorn does."""

    drain: Callable[[], Awaitable[None]] | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.drain is not None:
            await self.drain()
        await super().shutdown(sockets)


def server(settings: Settings, app: FastAPI) -> uvicorn.Server:
    install_redaction()  # uvicorn logs WebSocket request lines with their query string: never the viewer token
    host, port = settings.listen_host_port
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=GatewayWebSocket,  # uvicorn's sans-I/O WebSocket with the relay's splice
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        ws_max_size=4 * 1024 * 1024,
        # RFB framebuffer data is already compressed (Tight/ZRLE) or raw on a fast link: deflating it again per
        # message costs the gateway CPU for little gain (websockify does not deflate either).
        ws_per_message_deflate=False,
        limit_concurrency=1000,
        timeout_keep_alive=30,
        log_config=None,
        access_log=False,
        # a node's API + gateway over TLS (edges verify it against HEARTH_NODE_CA); both set or neither (config check)
        ssl_certfile=str(settings.node_tls_cert) if settings.node_tls_cert else None,
        ssl_keyfile=str(settings.node_tls_key) if settings.node_tls_key else None,
    )
    srv = Server(config)
    ctl = getattr(app.state, "controller", None)
    if ctl is not None:
        if warning := sandboxes_die_with_me():  # a controller as PID 1 of a PID namespace: its sandboxes die with it
            log.warning(warning)
        service = ctl.service

        async def drain() -> None:
            service.drain()
            await ctl.viewers.wait_idle(DRAIN_TIMEOUT)

        srv.drain = drain
    return srv
