"""Shared fixtures. Root tests build everything inside namespaces they create (`hearth-t<hex>`) and delete it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings, load_settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and shutil.which("bwrap"):
        return
    skip = pytest.mark.skip(reason="needs root, network namespaces and the sandbox packages (scripts/setup.sh)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir the unprivileged sandbox user can traverse (pytest's tmp dirs are 0700), removed afterwards."""
    root = Path("/var/tmp/hearth-tests")
    root.mkdir(mode=0o711, exist_ok=True)
    path = root / secrets.token_hex(4)
    path.mkdir(mode=0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_settings(data_dir: Path) -> Callable[..., Settings]:
    """Settings for an isolated hearth instance: unique fabric namespace, own data dir, own API port."""

    def make(**env: str) -> Settings:
        base = {
            "HEARTH_FABRIC_NETNS": f"hearth-t{secrets.token_hex(3)}",
            "HEARTH_DATA_DIR": str(data_dir),
            "HEARTH_API_LISTEN": f"127.0.0.1:{free_port()}",
            "HEARTH_API_KEYS": "test-key",
            "HEARTH_DRIVER": "netns",
            "HEARTH_READY_TIMEOUT": "60",
        }
        base.update(env)
        return load_settings(base, env_file=None)

    return make


@dataclass
class Running:
    settings: Settings
    base_url: str
    ws_base: str
    ctl: Any
    headers: dict[str, str]


@contextlib.asynccontextmanager
async def running_controller(settings: Settings) -> AsyncIterator[Running]:
    """A real controller (uvicorn on loopback) with its fabric; everything is removed on exit."""
    from hearth.api.app import build, create_app
    from hearth.cli.serve import server

    ctl = build(settings)
    srv = server(settings, create_app(ctl))
    task = asyncio.create_task(srv.serve())
    try:
        for _ in range(600):
            if srv.started or task.done():
                break
            await asyncio.sleep(0.05)
        if task.done():
            task.result()
        assert srv.started, "controller did not start"
        host, port = settings.listen_host_port
        yield Running(
            settings,
            f"http://{host}:{port}",
            f"ws://{host}:{port}",
            ctl,
            {"Authorization": f"Bearer {settings.api_keys[0]}"},
        )
    finally:
        srv.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        await ctl.fabric.down(force=True)
