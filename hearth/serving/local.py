"""A complete controller on a loopback port, in-process: for the demo, selftests, benchmarks and tests.

`async with local_controller(settings) as lc:` builds the controller (fabric, store, driver, services), serves the
API and gateway with uvicorn, and on exit stops it, ends every session and removes the fabric namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from hearth.config import Settings, load_settings
from hearth.controller import Controller, build, make_app
from hearth.errors import ConfigError
from hearth.serving.serve import check_listen, serve_until_stopped, server


@contextlib.contextmanager
def scratch_settings(env: Mapping[str, str], prefix: str = "hearth-x") -> Iterator[Settings]:
    """Settings for a throw-away hearth on this host: its own data directory under /var/tmp (removed on exit), its
    own fabric namespace `<prefix><hex>`, a free loopback port, a random API key, the netns driver, and this host's
    guest image (`host_image_env`: the userspace production runs); `env` overrides."""
    data = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/var/tmp"))
    os.chmod(data, 0o711)  # the unprivileged sandbox user traverses it
    base = {
        "HEARTH_FABRIC_NETNS": f"{prefix}{secrets.token_hex(3)}",
        "HEARTH_DATA_DIR": str(data),
        "HEARTH_API_LISTEN": f"127.0.0.1:{free_port()}",
        "HEARTH_API_KEYS": f"{prefix}-{secrets.token_hex(8)}",
        "HEARTH_DRIVER": "netns",
        "HEARTH_EGRESS": "false",  # a scratch hearth: no uplink in this host's namespace unless `env` asks for one
        **host_image_env(),
    }
    try:
        yield load_settings(base | dict(env), env_file=None)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def host_image_env() -> dict[str, str]:
    """This host's guest image setting as `hearth serve` reads it (HEARTH_IMAGE_DIR, else <HEARTH_DATA_DIR>/image;
    from the environment and ./.env): a scratch hearth's data dir has no image of its own, so without this its
    sandboxes would run the host's /usr instead of the userspace production runs."""
    images: Path | None
    try:
        images = load_settings().images
    except ConfigError:  # this host's configuration does not load: the variable alone, when set
        images = Path(os.environ["HEARTH_IMAGE_DIR"]) if os.environ.get("HEARTH_IMAGE_DIR") else None
    return {"HEARTH_IMAGE_DIR": str(images.resolve())} if images is not None else {}


def userspace(settings: Settings) -> str:
    """Which userspace `settings`' sandboxes run, in words (benchmarks print it with their figures)."""
    if settings.driver == "netns":
        from hearth.sandbox.netns import NetnsDriver

        return f"netns sandboxes run {NetnsDriver(settings).root_choice()}"
    return f"{settings.driver} sandboxes boot the guest image at {settings.images}"


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
async def local_controller(
    settings: Settings, start_timeout: float = 60.0, remove_fabric: bool = True, drain: bool = True
) -> AsyncIterator[LocalController]:
    """`remove_fabric=False` leaves a fabric namespace in place (the demo keeps one it found at start); `drain=False`
    leaves the sandboxes running on exit, as `hearth serve` does (for a next controller to adopt)."""
    check_listen(settings)
    ctl = build(settings, drain=drain)
    srv = server(settings, make_app(ctl))
    task = asyncio.create_task(serve_until_stopped(srv), name="uvicorn")
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
        if remove_fabric and settings.dial_netns is not None:  # the loopback driver (tests) made no fabric
            await ctl.fabric.down(force=True)
