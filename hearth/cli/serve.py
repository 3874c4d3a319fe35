"""Run the controller: uvicorn with gateway pings below proxy idle timeouts."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from hearth.config import Settings
from hearth.log import install_redaction


def server(settings: Settings, app: FastAPI) -> uvicorn.Server:
    install_redaction()  # uvicorn logs WebSocket request lines with their query string: never the viewer token
    host, port = settings.listen_host_port
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        ws_max_size=4 * 1024 * 1024,
        limit_concurrency=1000,
        timeout_keep_alive=30,
        log_config=None,
        access_log=False,
    )
    return uvicorn.Server(config)
