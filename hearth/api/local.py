"""A complete controller on a loopback port, in-process: for the demo, selftests, benchmarks and tests.

`async with local_controller(settings) as lc:` builds the controller (fabric, store, driver, services), serves the
API and gateway with uvicorn, and on exit stops it, ends every session and removes the fabric namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hearth.api.app import Controller, build, create_app
from hearth.cli.serve import server
from hearth.config import Settings


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalController:
    settings: Settings
    base_url: str
    ws_base: str
    ctl: Controller
    headers: dict[str, str]


@contextlib.asynccontextmanager
async def local_controller(settings: Settings, start_timeout: float = 60.0) -> AsyncIterator[LocalController]:
    ctl = build(settings)
    srv = server(settings, create_app(ctl))
    task = asyncio.create_task(srv.serve(), name="uvicorn")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout
        while not srv.started:
            if task.done():
                task.result()  # the startup error (fabric, port in use, …)
                raise RuntimeError("the controller exited during startup")
            if loop.time() > deadline:
                raise TimeoutError(f"the controller did not start within {start_timeout:.0f}s")
            await asyncio.sleep(0.05)
        host, port = settings.listen_host_port
        key = settings.api_keys[0] if settings.api_keys else ""
        yield LocalController(
            settings, f"http://{host}:{port}", f"ws://{host}:{port}", ctl, {"Authorization": f"Bearer {key}"}
        )
    finally:
        srv.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        await ctl.fabric.down(force=True)
