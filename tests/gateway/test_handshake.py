"""The gateway's relay, handshake included, for every RFB version a viewer may answer with and any split of its
stream: in view scope no input byte reaches the VNC server; control scope relays everything a strict server
accepts; a message that breaks the specification's preconditions closes the viewer (4403) in either scope.

The sandbox side is a real RFB 3.8 server on a loopback socket that records every byte it receives after
ClientInit. The viewer side is an in-memory stand-in for Starlette's WebSocket (receive/send_bytes only): it is the
one thing mocked, so hypothesis can choose the message boundaries and run hundreds of cases quickly; the live
tests (tests/gateway/test_viewers.py, tests/hostile/) do the same through a real WebSocket and x11vnc.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.websockets import WebSocket

from hearth.gateway.handshake import OFFERED, ViewerHandshakeError, viewer_version
from hearth.gateway.relay import Ended, Outcome, relay
from hearth.gateway.websocket import SPLICE
from hearth.rfb.stream import SandboxStream
from tests.gateway.rfbmsgs import expected, messages, split

SERVER_INIT = struct.pack(">HH16sI", 16, 16, bytes(16), 3) + b"rec"
VERSIONS = {  # what the viewer answers → the protocol the gateway must follow (RFB spec: unknown ones are 3.3)
    b"RFB 003.003\n": (3, 3),
    b"RFB 003.005\n": (3, 3),
    b"RFB 003.007\n": (3, 7),
    b"RFB 003.008\n": (3, 8),
    b"RFB 003.889\n": (3, 3),
    b"RFB 004.001\n": (3, 3),
}


class FakeViewer:
    """Starlette WebSocket's receive/send_bytes and hearth's splice (hearth.gateway.websocket.Splice) over a list
    of chunks (then a disconnect)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = bytearray()
        self.scope = {"extensions": {SPLICE: self}}
        self.spliced = False

    async def receive(self) -> dict[str, Any]:
        if self.chunks:
            return {"type": "websocket.receive", "bytes": self.chunks.pop(0)}
        return {"type": "websocket.disconnect", "code": 1000}

    async def send_bytes(self, data: bytes) -> None:
        self.sent += data

    def splice(self, on_message: Callable[[bytes], None], on_writable: Callable[[bool], None]) -> list[bytes]:
        taken, self.chunks, self.spliced = self.chunks, [], True  # every chunk left, in order: then a disconnect
        return taken

    def send_now(self, data: bytes) -> None:
        assert self.spliced, "the relay sends without awaiting only once spliced"
        self.sent += data

    def hold(self, held: bool) -> None:
        pass  # an in-memory viewer is always writable

    def unsplice(self) -> None:
        self.spliced = False


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[int, bytearray, asyncio.Event]]:
    """An RFB 3.8 server (security None) on loopback for one connection; its post-ClientInit bytes are recorded
    and the event set at EOF."""
    got, eof = bytearray(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"RFB 003.008\n")
            assert await reader.readexactly(12) == b"RFB 003.008\n"
            writer.write(b"\x01\x01")
            assert await reader.readexactly(1) == b"\x01"
            writer.write(struct.pack(">I", 0))
            assert await reader.readexactly(1) == b"\x01", "the gateway must always ask for a shared session"
            writer.write(SERVER_INIT)
            while data := await reader.read(65536):
                got.extend(data)
        finally:
            eof.set()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, got, eof
    finally:
        server.close()
        await server.wait_closed()


def viewer_preamble(banner: bytes) -> bytes:
    """What a viewer sends before its first message: version, security choice (3.7/3.8 only), ClientInit."""
    return banner + (b"" if VERSIONS[banner] == (3, 3) else b"\x01") + b"\x00"  # ClientInit asks for exclusive


def expected_reply(banner: bytes) -> bytes:
    version = VERSIONS[banner]
    security = {(3, 3): struct.pack(">I", 1), (3, 7): b"\x01\x01", (3, 8): b"\x01\x01" + struct.pack(">I", 0)}
    return OFFERED + security[version] + SERVER_INIT


async def run_relay(chunks: list[bytes], view_only: bool) -> tuple[Outcome, bytes, bytes]:
    """The real relay between FakeViewer(chunks) and the recording server: (outcome, to viewer, to server)."""
    async with recording_server() as (port, got, eof):
        _, sandbox = await asyncio.get_running_loop().create_connection(SandboxStream, "127.0.0.1", port)
        viewer = FakeViewer(chunks)
        outcome = await relay(cast(WebSocket, viewer), sandbox, asyncio.Event(), view_only=view_only)
        await asyncio.wait_for(eof.wait(), 10)  # the relay closed its side; the server has read everything
        return outcome, bytes(viewer.sent), bytes(got)


@settings(max_examples=150, deadline=None)
@given(banner=st.sampled_from(sorted(VERSIONS)), msgs=messages(), view=st.booleans(), data=st.data())
def test_no_input_reaches_the_server_in_view_scope(
    banner: bytes, msgs: list[bytes], view: bool, data: st.DataObject
) -> None:
    stream = viewer_preamble(banner) + b"".join(msgs)
    outcome, to_viewer, to_server = asyncio.run(run_relay(split(stream, data), view))
    forwarded, refused = expected(msgs, view)
    assert outcome.ended is (Ended.FORBIDDEN if refused else Ended.CLIENT_GONE), outcome.detail
    assert to_viewer == expected_reply(banner)
    assert to_server == forwarded


@pytest.mark.parametrize("banner", sorted(VERSIONS))
async def test_unknown_message_type_closes_the_viewer(banner: bytes) -> None:
    fb_request = struct.pack(">BBHHHH", 3, 0, 0, 0, 16, 16)
    key = struct.pack(">BBxxI", 4, 1, 0x61)
    chunks = [viewer_preamble(banner) + fb_request + key, bytes([77]) + key + fb_request]
    for view in (True, False):
        outcome, _, to_server = await run_relay(chunks, view)
        assert outcome.ended is Ended.FORBIDDEN and "type 77" in outcome.detail
        assert to_server == fb_request + (b"" if view else key)


@pytest.mark.parametrize(
    ("banner", "why"),
    [(b"HTTP/1.1 200\n", "RFB ProtocolVersion"), (b"RFB 3.8\n\n\n\n\n", "RFB ProtocolVersion")],
)
async def test_a_viewer_that_does_not_speak_rfb_is_refused(banner: bytes, why: str) -> None:
    outcome, _, to_server = await run_relay([banner + b"\x01\x01"], True)
    assert outcome.ended is Ended.BAD_VIEWER and why in outcome.detail
    assert to_server == b""


async def test_a_viewer_choosing_another_security_type_is_refused() -> None:
    outcome, to_viewer, to_server = await run_relay([b"RFB 003.008\n\x02"], False)
    assert outcome.ended is Ended.BAD_VIEWER and "security type 2" in outcome.detail
    assert to_viewer.startswith(OFFERED + b"\x01\x01" + struct.pack(">I", 1))  # SecurityResult failed + reason
    assert to_server == b""


def test_version_mapping_follows_the_spec() -> None:
    for banner, version in VERSIONS.items():
        assert viewer_version(banner) == version
    with pytest.raises(ViewerHandshakeError):
        viewer_version(b"RFB 03.008\n\n")
