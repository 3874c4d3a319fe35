"""Viewers under stress, through the real gateway to a live sandbox: abrupt disconnects, idle viewers across ping
intervals, many viewers on one session, and view-only input dropping checked at the RFB byte level.

HEARTH_WS_PING_INTERVAL=1 so "several ping intervals" is a few seconds; a small screen keeps 50 full framebuffer
updates cheap. Every test also checks that nothing in the controller logged an error (a crash shows up there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from hearth.config import Settings
from hearth.rfb.client import ServerInit, handshake, request_frame
from hearth.rfb.ws import WsByteStream, first_frame
from tests import rawws
from tests.conftest import Running, running_controller
from tests.live import Live, scaled, start_ready
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]
SCREEN = "640x400x24"
VIEWERS = scaled(50)


def viewer_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        HEARTH_CHROMIUM="false",
        HEARTH_WS_PING_INTERVAL="1",
        HEARTH_SCREEN=SCREEN,
        HEARTH_VIEWER_WAIT="60",
    )


async def open_viewer(url: str, banner: bytes = b"RFB 003.008\n") -> tuple[ClientConnection, WsByteStream, ServerInit]:
    ws = await connect(url, subprotocols=["binary"], max_size=None, ping_interval=None)  # type: ignore[list-item]
    stream = WsByteStream(ws, 30)
    if banner == b"RFB 003.008\n":
        return ws, stream, await handshake(stream.read, stream.write)
    return ws, stream, await legacy_handshake(stream, banner)


async def legacy_handshake(stream: WsByteStream, banner: bytes) -> ServerInit:
    """An older viewer's side of the handshake: 3.7 (security list, no SecurityResult) or 3.3 (the server picks
    the security type) — any version other than 3.7/3.8 is 3.3 per the RFB specification."""
    offered = await stream.read(12)
    await stream.write(banner)
    if banner == b"RFB 003.007\n":
        count = (await stream.read(1))[0]
        assert 1 in await stream.read(count)
        await stream.write(b"\x01")
    else:
        assert struct.unpack(">I", await stream.read(4))[0] == 1
    await stream.write(b"\x01")  # ClientInit
    head = await stream.read(24)
    width, height = struct.unpack(">HH", head[:4])
    name = await stream.read(struct.unpack(">I", head[20:24])[0])
    return ServerInit(offered.decode().strip(), width, height, name.decode())


async def frame_of(stream: WsByteStream, init: ServerInit, w: int = 0, h: int = 0) -> int:
    """One non-incremental update of the top-left w×h (default: everything); returns the pixels received."""
    region = ServerInit(init.version, w or init.width, h or init.height, init.name)
    rects = await request_frame(stream.read, stream.write, region)
    return sum(len(r.pixels) // 4 for r in rects)


def no_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


@contextlib.asynccontextmanager
async def viewer_session(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture, user: str
) -> AsyncIterator[tuple[Running, httpx.AsyncClient, Live]]:
    """A controller with the viewer settings, an API client and one ready session; on a clean exit, asserts that
    nothing in the controller logged an error meanwhile."""
    caplog.set_level(logging.WARNING)
    async with (
        running_controller(viewer_settings(make_settings)) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        yield ctl, http, await start_ready(http, ctl.settings, user)


async def test_abrupt_disconnect_and_idle_viewers(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with viewer_session(make_settings, caplog, "viewers") as (ctl, http, live):
        gauge = ctl.ctl.viewers
        url = live.ws_url(ctl)

        steady, steady_stream, init = await open_viewer(url)
        assert (init.width, init.height) == (640, 400)
        updates = 0
        stop = asyncio.Event()

        async def keep_watching() -> None:  # the steady viewer keeps pulling full frames the whole time
            nonlocal updates
            while not stop.is_set():
                assert await frame_of(steady_stream, init) == 640 * 400
                updates += 1

        watcher = asyncio.create_task(keep_watching())
        try:
            # A second viewer asks for a full frame and vanishes mid-update: RST, no close handshake.
            rude, rude_stream, _ = await open_viewer(url)
            await rude_stream.write(struct.pack(">BBHHHH", 3, 0, 0, 0, 640, 400))
            partial = await asyncio.wait_for(rude.recv(), 30)
            sock = rude.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rude.transport.abort()
            print(f"\nabrupt close after {len(partial)} bytes of a 1 MB update")
            await eventually(lambda: gauge.count(live.session_id) == 1, 15, "the aborted viewer was not released")
            seen = updates
            await eventually(lambda: updates >= seen + 3, 15, "the steady viewer stopped getting frames")

            # An idle viewer (never sends; its client library answers the gateway's pings) across 4 intervals…
            idle, idle_stream, idle_init = await open_viewer(url)
            # … while a raw client that never answers pings is dropped by the gateway.
            host, port = ctl.settings.listen_host_port
            path = url.split(str(port), 1)[1]
            mute_sock, rest = await asyncio.to_thread(rawws.connect, host, port, path)
            try:
                mute = await asyncio.to_thread(rawws.read_until_closed, mute_sock, rest, 20.0)
            finally:
                mute_sock.close()
            print(
                f"mute client: {mute.count(rawws.OP_PING)} pings unanswered, then "
                f"close {mute.close_code} {mute.close_reason!r} eof={mute.eof}"
            )
            assert mute.count(rawws.OP_PING) >= 1 and mute.eof
            await asyncio.sleep(4 * ctl.settings.ws_ping_interval)
            assert await frame_of(idle_stream, idle_init) == 640 * 400  # still connected, still served
            print(f"idle viewer served after {4 * ctl.settings.ws_ping_interval:.0f}s idle; steady updates: {updates}")
            await idle.close()
        finally:
            stop.set()
            await asyncio.wait_for(watcher, 30)
            await steady.close()
        await eventually(lambda: gauge.count(live.session_id) == 0, 15, "no viewer counted")
        assert (await http.get(f"/api/auth/session/{live.session_id}")).json()["status"] == "ready"
        assert (await http.get("/health")).status_code == 200


async def test_many_concurrent_viewers_on_one_session(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    async with viewer_session(make_settings, caplog, "crowd") as (ctl, http, live):
        gauge = ctl.ctl.viewers
        peak = 0

        async def watch_peak() -> None:
            nonlocal peak
            while True:
                peak = max(peak, gauge.count(live.session_id))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_peak())
        try:
            frames = await asyncio.gather(*(first_frame(live.ws_url(ctl), timeout=120) for _ in range(VIEWERS)))
        finally:
            watcher.cancel()
        complete = [f for f in frames if (f.init.width, f.init.height) == (640, 400) and f.rects]
        pixels = [sum(len(r.pixels) // 4 for r in f.rects) for f in frames]
        print(f"\nviewers: {len(complete)}/{VIEWERS} handshook and got a framebuffer update; peak connected {peak}")
        assert len(complete) == VIEWERS
        assert all(p == 640 * 400 for p in pixels)
        await eventually(lambda: gauge.count(live.session_id) == 0, 15, "no viewer counted")
        assert (await http.get(f"/api/auth/session/{live.session_id}")).json()["status"] == "ready"


KEY_DOWN = struct.pack(">BBxxI", 4, 1, 0x61)
KEY_UP = struct.pack(">BBxxI", 4, 0, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 10)
CUT = struct.pack(">BxxxI", 6, 1) + b"x"
INPUT = KEY_DOWN + KEY_UP + POINTER + CUT  # 31 bytes
FRAME_REQUEST = 20 + 8 + 10  # SetPixelFormat + SetEncodings(raw) + FramebufferUpdateRequest, per request_frame


async def test_view_only_token_drops_input_at_the_rfb_level(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes the gateway relays to the sandbox (hearth_gateway_bytes{direction="to_sandbox"}): a view-only
    viewer's key, pointer and clipboard messages never reach the VNC server; a control viewer's do."""
    async with viewer_session(make_settings, caplog, "viewonly") as (ctl, http, live):
        registry = ctl.ctl.service.metrics.registry

        def to_sandbox() -> float:
            return registry.get_sample_value("hearth_gateway_bytes_total", {"direction": "to_sandbox"}) or 0.0

        async def relayed_input(token: str, banner: bytes = b"RFB 003.008\n") -> float:
            ws, stream, init = await open_viewer(live.ws_url(ctl, token), banner)
            try:
                before = to_sandbox()
                await stream.write(INPUT)
                assert await frame_of(stream, init, 16, 16) > 0  # pending damage may come along
                assert await frame_of(stream, init, 16, 16) > 0
                # The gateway relays a viewer's messages in order, so once both frame requests are counted, so is
                # (or is not) the input sent before them.
                await eventually(
                    lambda: to_sandbox() - before >= 2 * FRAME_REQUEST, 15, "two frame requests at the sandbox"
                )
                return to_sandbox() - before - 2 * FRAME_REQUEST
            finally:
                await ws.close()

        r = await http.post(f"/api/auth/session/{live.session_id}/token", json={"scope": "view"})
        assert r.status_code == 200 and r.json()["scope"] == "view"
        view_token = r.json()["viewer_token"]
        viewed = await relayed_input(view_token)
        controlled = await relayed_input(live.viewer_token)
        print(f"\ninput bytes relayed to the sandbox: view scope {viewed:.0f}, control scope {controlled:.0f}")
        assert viewed == 0
        assert controlled == len(INPUT)
        # Older handshakes (3.7; 3.3 and the odd versions read as 3.3) against the real x11vnc: same result.
        for banner in (b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.889\n"):
            assert await relayed_input(view_token, banner) == 0, banner
            assert await relayed_input(live.viewer_token, banner) == len(INPUT), banner
