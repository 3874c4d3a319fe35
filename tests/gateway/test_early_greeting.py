"""The viewer's RFB handshake runs while its session boots (hearth/gateway/greeting.py `Greeting`): a viewer that has
sent its ClientInit before the sandbox is even dialled gets the sandbox's own ServerInit once it is known, and a
session that fails while the viewer handshakes closes it exactly as before (4502, the session's reason); one that
is over when the viewer arrives is refused before any RFB byte. A warm-pool hand-over's desktop is dialled and
handshaken before the session is ready (hearth/gateway/predial.py), once, and relayed when it is; one the warm pool
already holds a connection to (hearth/session/standby.py) is relayed over that one, with no dial of the route's.

The route runs on Starlette's test client with the gateway's ports faked (hearth/gateway/ports.py): the session's
status is the test's to set. The relay case uses the in-memory viewer and recording RFB server of test_handshake.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import cast

import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from hearth.config import Settings
from hearth.errors import HearthError
from hearth.gateway.gauge import ViewerGauge
from hearth.gateway.greeting import Greeting
from hearth.gateway.handshake import OFFERED
from hearth.gateway.relay import Ended, relay
from hearth.gateway.routes import UNREACHABLE, make_router
from hearth.gateway.tokens.base import Claims, Scope
from hearth.gateway.websocket import GatewayWebSocket
from hearth.lifecycle.readiness import Target
from hearth.observe.metrics import Metrics
from hearth.rfb.stream import SandboxStream
from hearth.session.standby import Standby
from hearth.session.states import Status
from hearth.session.view import SessionView
from hearth.signin.modes import SigninMode
from hearth.store.db import Database
from tests.gateway.rfbmsgs import fb_request
from tests.gateway.test_handshake import SERVER_INIT, FakeViewer, recording_server
from tests.gateway.test_websocket import SERVER_INIT as VNC_INIT
from tests.gateway.test_websocket import serve_rfb_handshake
from tests.session.test_standby import Vnc, vnc_server
from tests.waits import eventually

SID = "s-early"
REASON = "[vnc] the desktop did not come up"


def view(status: Status, node: str) -> SessionView:
    now = datetime.now(UTC)
    reason = REASON if status is Status.FAILED else None
    return SessionView(
        SID, "u", None, SigninMode.REMOTE_BROWSER, status, reason, None, "netns", 1, "192.0.2.2", {}, now, now, node
    )


class Session:
    """The faked ports: one session whose status the test moves (from its own thread)."""

    def __init__(self, status: Status, node: str) -> None:
        self.status, self.node = status, node
        self.changed = threading.Event()
        self.waited = threading.Event()  # the route waits for the session (the viewer may handshake meanwhile)

    def move(self, status: Status) -> None:
        self.status = status
        self.changed.set()

    # Relaying
    draining = False
    fenced = None

    def live_view(self, session_id: str) -> SessionView | None:
        return None

    async def wait_until(self, session_id: str, timeout: float) -> SessionView:
        self.waited.set()
        deadline = time.monotonic() + timeout
        while self.status.booting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return view(self.status, self.node)

    def stop_event(self, session_id: str) -> asyncio.Event:
        return asyncio.Event()

    def first_frame(self, view: SessionView) -> None:
        pass

    seen: int = 0  # frame_seen calls

    def frame_seen(self, view: SessionView) -> None:
        self.seen += 1

    # Rows
    async def get(self, session_id: str) -> SessionView:
        return view(self.status, self.node)

    # Targets
    desktop: Target | None = None  # where its desktop is (the predial case); None: never to be dialled

    def target(self, view: SessionView) -> Target:
        assert self.desktop is not None, "a failed session is never dialled"
        return self.desktop

    def warm(self, session_id: str) -> Target | None:
        return self.desktop

    async def explain(self, session_id: str, err: HearthError) -> str:
        return err.reason

    # TokenStore
    def verify(self, token: str, session_id: str) -> Claims:
        return Claims(session_id, Scope.CONTROL, time.time() + 60, self.node)

    def issue(self, session_id: str, scope: Scope, ttl: float) -> str:
        return "t"


@contextmanager
def gateway(settings: Settings, session: Session) -> Iterator[TestClient]:
    app = FastAPI()
    db = cast(Database, None)  # only a session on another node looks its node up
    app.include_router(make_router(settings, session, session, session, session, db, ViewerGauge(), Metrics()))
    with TestClient(app) as client:
        yield client


def closed(ws: object) -> tuple[int, str]:
    with pytest.raises(WebSocketDisconnect) as gone:
        while True:
            ws.receive_bytes()  # type: ignore[attr-defined]
    return gone.value.code, gone.value.reason


def test_a_session_failing_while_the_viewer_handshakes_closes_it_as_before(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(HEARTH_VIEWER_WAIT="5")  # a gateway without the early greeting fails in 5 s
    session = Session(Status.STARTING, settings.node_id)
    with gateway(settings, session) as client, client.websocket_connect(f"/api/auth/session/{SID}/novnc/websock") as ws:
        assert ws.receive_bytes() == OFFERED  # the viewer's handshake began while the session boots
        ws.send_bytes(b"RFB 003.008\n")
        assert ws.receive_bytes() == b"\x01\x01"
        ws.send_bytes(b"\x01")
        assert ws.receive_bytes() == b"\x00\x00\x00\x00"
        ws.send_bytes(b"\x01")  # ClientInit: the viewer now waits for the ServerInit
        assert session.waited.wait(10)
        session.move(Status.FAILED)
        assert closed(ws) == (UNREACHABLE, f"session failed: {REASON}")


def test_a_bad_viewer_of_a_session_that_fails_gets_the_sessions_close(make_settings: Callable[..., Settings]) -> None:
    """The session's outcome is looked at first, as before the greeting ran early: 4502, not the viewer's 4400."""
    settings = make_settings(HEARTH_VIEWER_WAIT="5")  # a gateway without the early greeting fails in 5 s
    session = Session(Status.STARTING, settings.node_id)
    with gateway(settings, session) as client, client.websocket_connect(f"/api/auth/session/{SID}/novnc/websock") as ws:
        assert ws.receive_bytes() == OFFERED
        ws.send_bytes(b"HTTP/1.1 200")  # not RFB
        assert session.waited.wait(10)
        session.move(Status.FAILED)
        assert closed(ws) == (UNREACHABLE, f"session failed: {REASON}")


def test_a_session_already_over_is_refused_before_any_rfb(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_VIEWER_WAIT="5")  # a gateway without the early greeting fails in 5 s
    session = Session(Status.FAILED, settings.node_id)
    with gateway(settings, session) as client, client.websocket_connect(f"/api/auth/session/{SID}/novnc/websock") as ws:
        assert closed(ws) == (UNREACHABLE, f"session failed: {REASON}")  # no banner came first


async def test_a_viewer_that_finished_its_handshake_before_the_dial_gets_the_sandboxs_server_init() -> None:
    preamble = b"RFB 003.008\n\x01\x01"  # version, security None, ClientInit (shared)
    viewer = FakeViewer([preamble, fb_request()])
    greeting = Greeting(cast(WebSocket, viewer))
    greeted = OFFERED + b"\x01\x01\x00\x00\x00\x00"  # version offered, security None, SecurityResult OK

    def handshaken() -> bool:  # the viewer's whole handshake, with no sandbox yet: its ClientInit taken
        assert bytes(viewer.sent) == greeted and len(viewer.chunks) == 1, (bytes(viewer.sent), viewer.chunks)
        return True

    await eventually(handshaken, 10, "the viewer's handshake up to ClientInit")
    async with recording_server() as (port, got, eof):  # only now is the sandbox there to dial
        _, sandbox = await asyncio.get_running_loop().create_connection(SandboxStream, "127.0.0.1", port)
        outcome = await relay(cast(WebSocket, viewer), sandbox, asyncio.Event(), greeting=greeting)
        await asyncio.wait_for(eof.wait(), 10)
    assert outcome.ended is Ended.CLIENT_GONE, outcome.detail
    assert bytes(viewer.sent) == greeted + SERVER_INIT  # the sandbox's own ServerInit
    assert bytes(got) == fb_request()  # what the viewer sent after its ClientInit reached the sandbox, in order


async def test_a_handed_over_desktop_is_dialled_before_ready_and_relayed_once_ready(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(HEARTH_VIEWER_WAIT="5")
    session = Session(Status.STARTING, settings.node_id)
    dialled: list[Status] = []  # the session's status at each connection to the VNC server

    async def vnc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled.append(session.status)
        try:
            await serve_rfb_handshake(reader, writer)
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async with vnc_server(vnc) as session.desktop:
        router = make_router(settings, session, session, session, session, NO_DB, ViewerGauge(), Metrics())
        async with served(router) as url, connect(url, subprotocols=[Subprotocol("binary")]) as ws:
            await handshake_up_to_client_init(ws)

            def predialled() -> bool:
                assert dialled == [Status.STARTING], dialled
                return True

            await eventually(predialled, 10, "the VNC server dialled while the session is handed over")
            session.move(Status.READY)
            assert await asyncio.wait_for(ws.recv(), 10) == VNC_INIT  # the predialled sandbox's own
            assert dialled == [Status.STARTING]  # that one connection is the viewer's: no second dial


NO_DB = cast(Database, None)  # only a session on another node looks its node up


@asynccontextmanager
async def served(router: APIRouter) -> AsyncIterator[str]:
    """The gateway's `router` under uvicorn (with the gateway's WebSocket protocol) on a loopback port; yields the
    viewer WebSocket's URL of session SID."""
    app = FastAPI()
    app.include_router(router)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, ws=GatewayWebSocket, ws_per_message_deflate=False, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started, 10, "uvicorn")
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/api/auth/session/{SID}/novnc/websock?token=t"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def handshake_up_to_client_init(ws: ClientConnection) -> None:
    """The viewer's RFB 3.8 handshake with security None, up to and including its ClientInit (shared)."""
    assert await ws.recv() == OFFERED
    await ws.send(b"RFB 003.008\n")
    assert await ws.recv() == b"\x01\x01"
    await ws.send(b"\x01")
    assert await ws.recv() == b"\x00\x00\x00\x00"
    await ws.send(b"\x01")


async def test_the_first_viewer_is_relayed_over_the_held_connection(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_VIEWER_WAIT="5")
    session = Session(Status.READY, settings.node_id)
    vnc, standby = Vnc(), Standby()
    async with vnc_server(vnc.serve) as target:
        session.desktop = target
        assert await standby.hold(target)
        router = make_router(settings, session, session, session, session, NO_DB, ViewerGauge(), Metrics(), standby)
        try:
            async with served(router) as url, connect(url, subprotocols=[Subprotocol("binary")]) as ws:
                await handshake_up_to_client_init(ws)
                assert await asyncio.wait_for(ws.recv(), 10) == VNC_INIT  # the held connection's own
                await ws.send(fb_request())  # relayed to the server over the held connection
                await eventually(lambda: bytes(vnc.received) == fb_request(), 10, "the request at the server")
            assert vnc.connections == 1 and len(standby) == 0  # the standby's connection: no dial of the route's
        finally:
            await standby.close()


async def test_a_viewer_has_its_first_frame_once_it_asks_for_the_next(make_settings: Callable[..., Settings]) -> None:
    """`frame_seen` (what a hand-over's refill and a new desktop's browser wait for) comes once the viewer asks for
    the update after the first one — it has the first whole — and only once; not while the first is under way."""
    settings = make_settings(HEARTH_VIEWER_WAIT="5")
    session = Session(Status.READY, settings.node_id)
    update = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, 1, 1, 0) + b"\x00\x00\xff\x00"  # 1x1 raw
    asked = 0

    async def vnc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        try:
            await serve_rfb_handshake(reader, writer)
            while True:  # every FramebufferUpdateRequest gets a one-pixel update
                request = await reader.readexactly(10)
                assert request[0] == 3, request
                asked += 1
                writer.write(update)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async with vnc_server(vnc) as session.desktop:
        router = make_router(settings, session, session, session, session, NO_DB, ViewerGauge(), Metrics())
        async with served(router) as url, connect(url, subprotocols=[Subprotocol("binary")]) as ws:
            await handshake_up_to_client_init(ws)
            assert await asyncio.wait_for(ws.recv(), 10) == VNC_INIT
            await ws.send(fb_request())
            assert await asyncio.wait_for(ws.recv(), 10) == update
            assert session.seen == 0  # it reached the viewer, but the gateway cannot know it arrived whole yet
            await ws.send(fb_request(incremental=1))  # it asks for the next one: it has the first
            await eventually(lambda: session.seen == 1, 10, "frame_seen after the viewer's next request")
            assert await asyncio.wait_for(ws.recv(), 10) == update
            await ws.send(fb_request(incremental=1))
            assert await asyncio.wait_for(ws.recv(), 10) == update
            assert asked == 3 and session.seen == 1  # once
