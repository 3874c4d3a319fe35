"""The real controller app without root: `hearth.controller.build` + `make_app` with a driver that refuses every boot
(no namespace, no process, no fabric) and no lifespan. Every route is the real one; a started session fails at once
with a driver error, so sessions exist to look at, cancel and ask tokens for."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from hearth.config import Settings
from hearth.controller import Controller, build, make_app
from hearth.errors import DriverError, Hop
from hearth.sandbox.base import Driver, SandboxInfo, SandboxSpec, StageMark
from tests.waits import eventually

KEY = "test-key"  # tests/conftest.py make_settings
AUTH = {"Authorization": f"Bearer {KEY}"}


class RefusingDriver(Driver):
    name = "refusing"

    async def start(self, spec: SandboxSpec, mark: StageMark) -> SandboxInfo:
        raise DriverError(Hop.DRIVER, "this test driver boots nothing", "none: the test wants failed sessions")

    async def destroy(self, spec: SandboxSpec) -> None:
        return None

    async def alive(self, spec: SandboxSpec) -> bool:
        return False


@dataclass
class Offline:
    app: FastAPI
    ctl: Controller
    session_id: str  # a session of this controller (its boot failed)


async def idle(ctl: Controller) -> bool:
    """The probe of the offline controller: no boot in flight."""
    return not any(ctl.service.boots.is_booting(v.id) for v in await ctl.service.records.list_active())


@contextlib.asynccontextmanager
async def offline_app(settings: Settings) -> AsyncIterator[Offline]:
    ctl = build(settings, driver=RefusingDriver())
    try:
        app = make_app(ctl)
        async with asgi(app) as http:
            r = await http.post("/api/auth/start", json={"user_id": "offline-user"}, headers=AUTH)
            assert r.status_code == 201, r.text
            session_id = str(r.json()["session_id"])
        await eventually(lambda: idle(ctl), 6, "no boot in flight", interval=0.01)
        yield Offline(app, ctl, session_id)
    finally:
        with contextlib.suppress(Exception):
            await ctl.service.stop_boots()
        ctl.db.dispose()


def asgi(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hearth.test", timeout=30)


def declared(schema: dict[str, Any], method: str, path: str) -> set[int]:
    """The status codes the OpenAPI declares for an operation."""
    return {int(code) for code in schema["paths"][path][method.lower()]["responses"]}
