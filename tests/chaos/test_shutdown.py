"""A graceful controller shutdown closes every viewer with a documented code and reason (4503 "controller shutting
down — reconnect"), not uvicorn's bare 1012; new viewers during the drain get the same."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hearth.config import Settings
from hearth.rfb.client import handshake, request_frame
from hearth.rfb.ws import WsByteStream
from tests.conftest import running_controller
from tests.live import start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow]


async def test_shutdown_closes_viewers_with_4503_and_a_reason(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false")
    async with contextlib.AsyncExitStack() as stack:
        ctl = await stack.enter_async_context(running_controller(settings))
        async with httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http:
            live = await start_ready(http, settings, "u1")
        async with connect(live.ws_url(ctl), subprotocols=["binary"], max_size=None) as ws:  # type: ignore[list-item]
            stream = WsByteStream(ws, 30)
            init = await handshake(stream.read, stream.write)
            assert await request_frame(stream.read, stream.write, init)
            stopping = asyncio.create_task(stack.aclose())
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 60)
            assert ws.close_code == 4503
            assert ws.close_reason == "controller shutting down — reconnect"
        await stopping
