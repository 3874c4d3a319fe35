"""The relay's splice through a real uvicorn server running hearth's WebSocket protocol (GatewayWebSocket), a real
WebSocket client and a real loopback VNC stand-in: order, backpressure both ways, the stall limit, text frames and
ends. Nothing is mocked; the route is a minimal one (accept, dial, relay) so each case can steer both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.typing import Subprotocol

from hearth.fabric.dial import open_protocol
from hearth.gateway import relay as relay_module
from hearth.gateway.relay import Ended, Outcome, relay
from hearth.gateway.websocket import GatewayWebSocket, frame_header
from hearth.rfb.stream import SandboxStream
from tests import rawws
from tests.gateway.rfbmsgs import NOVNC_START, desktop_size

SERVER_INIT = struct.pack(">HH16sI", 16, 16, bytes(16), 3) + b"vnc"
PREAMBLE = [b"RFB 003.008\n", b"\x01", b"\x01"]  # the viewer's version, security None, ClientInit (shared)
FBUR = struct.pack(">BBHHHH", 3, 0, 0, 0, 16, 16)
CHUNK = 64 * 1024
STALLED = 1.0  # a write that has not drained for this long counts as held back
BOUND = 64 << 20  # what may be in flight (socket buffers, queues) before a side is held back; far below the totals


def pattern(start: int, n: int) -> bytes:
    return bytes((start + i) % 251 for i in range(n))


async def serve_rfb_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The server's side of RFB 3.8 with security None, up to its ServerInit."""
    writer.write(b"RFB 003.008\n")
    await reader.readexactly(12)
    writer.write(b"\x01\x01")
    await reader.readexactly(1)
    writer.write(struct.pack(">I", 0))
    await reader.readexactly(1)
    writer.write(SERVER_INIT)


class Serves(Protocol):
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None: ...


class EchoVnc:
    """A loopback RFB server for any number of connections: after the handshake it echoes what it gets."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve_rfb_handshake(reader, writer)
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@dataclass
class Vnc:
    """A loopback RFB 3.8 server for one connection: after the handshake it records what it gets (unless
    `reading` is False) and, on `push(n)`, sends n pattern bytes until its writes are held back."""

    reading: bool = True
    got: bytearray = field(default_factory=bytearray)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    pushed: int = 0
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve_rfb_handshake(reader, writer)
            self.writer = writer
            self.ready.set()
            if not self.reading:
                await self.eof.wait()
                return
            while data := await reader.read(CHUNK):
                self.got.extend(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.eof.set()
            writer.close()

    async def push(self, total: int) -> bool:
        """Send up to `total` bytes; False when a write stayed held back for STALLED seconds first."""
        assert self.writer is not None
        while self.pushed < total:
            n = min(CHUNK, total - self.pushed)
            self.writer.write(pattern(self.pushed, n))
            self.pushed += n
            try:
                await asyncio.wait_for(self.writer.drain(), STALLED)
            except TimeoutError:
                return False
        return True


@contextlib.asynccontextmanager
async def gateway(vnc: Serves) -> AsyncIterator[tuple[str, asyncio.Queue[Outcome]]]:
    """uvicorn (hearth's WebSocket protocol) with one route: accept, dial the stand-in, relay, close."""
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    vnc_server = await asyncio.start_server(vnc.serve, "127.0.0.1", 0)
    vnc_port = vnc_server.sockets[0].getsockname()[1]

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept(subprotocol="binary")
        sandbox = await open_protocol(None, "127.0.0.1", vnc_port, 5.0, SandboxStream)
        outcome = await relay(ws, sandbox, asyncio.Event())
        await outcomes.put(outcome)
        if outcome.ended is not Ended.CLIENT_GONE:
            await ws.close(4502 if outcome.ended is Ended.SANDBOX_ERROR else 1000, outcome.ended.value)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, ws=GatewayWebSocket, ws_per_message_deflate=False, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}/ws", outcomes
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
        vnc_server.close()
        await vnc_server.wait_closed()


async def viewer(url: str, vnc: Vnc | None = None, **options: Any) -> ClientConnection:
    """A viewer through the gateway with both RFB handshakes done (and `vnc`'s side reached); `async with` it."""
    ws = await connect(url, subprotocols=[Subprotocol("binary")], **options)
    try:
        await handshake(ws)
        if vnc is not None:
            await asyncio.wait_for(vnc.ready.wait(), 10)
    except BaseException:
        await ws.close()
        raise
    return ws


async def handshake(ws: ClientConnection) -> None:
    """The viewer's side of the RFB handshake (then a framebuffer update request)."""
    got = bytearray()
    for message in PREAMBLE:
        await ws.send(message)
    while len(got) < 12 + 2 + 4 + len(SERVER_INIT):
        data = await ws.recv()
        assert isinstance(data, bytes)
        got += data
    assert got.endswith(SERVER_INIT)
    await ws.send(FBUR)


async def test_a_burst_sent_before_the_splice_arrives_whole_and_in_order() -> None:
    vnc = Vnc()
    async with gateway(vnc) as (url, outcomes):
        async with connect(url, subprotocols=[Subprotocol("binary")]) as ws:
            messages = [*PREAMBLE, FBUR, *(struct.pack(">BxxxI", 4, i) for i in range(300))]  # key events
            for message in messages:  # all at once, before the gateway has answered anything
                await ws.send(message)
            await asyncio.wait_for(vnc.ready.wait(), 10)
            expected = b"".join(messages[3:])
            for _ in range(500):
                if len(vnc.got) >= len(expected):
                    break
                await asyncio.sleep(0.01)
        outcome = await asyncio.wait_for(outcomes.get(), 10)
    assert bytes(vnc.got) == expected
    assert outcome.ended is Ended.CLIENT_GONE and outcome.stats.to_sandbox == len(expected)


async def test_100_viewers_at_once_each_get_exactly_their_own_bytes_back() -> None:
    """The splice keeps no state between connections: 100 concurrent viewers through one gateway to an echoing VNC
    server, each sending its own bytes in many messages, each gets back exactly its own, in order."""
    async with gateway(EchoVnc()) as (url, outcomes):

        async def one(i: int) -> bytes:
            async with await viewer(url) as ws:
                got = bytearray()
                want = b"".join(struct.pack(">BxxxI", 4, i * 1000 + k) for k in range(50))  # key events
                for k in range(0, len(want), 8):
                    await ws.send(want[k : k + 8])
                while len(got) < len(FBUR) + len(want):
                    data = await asyncio.wait_for(ws.recv(), 30)
                    assert isinstance(data, bytes)
                    got += data
                assert bytes(got) == FBUR + want, f"viewer {i} got another's bytes or lost some"
                return bytes(got)

        results = await asyncio.gather(*(one(i) for i in range(100)))
        ends = [await asyncio.wait_for(outcomes.get(), 30) for _ in range(100)]
    assert len(set(results)) == 100
    assert all(o.ended is Ended.CLIENT_GONE for o in ends), {o.ended for o in ends}


async def test_a_viewer_that_stops_reading_holds_the_vnc_server_back_and_loses_nothing() -> None:
    vnc = Vnc()
    total = 512 << 20
    async with gateway(vnc) as (url, outcomes):
        async with await viewer(url, vnc, max_size=None, max_queue=4) as ws:
            pusher = asyncio.create_task(vnc.push(total))
            held_back = not await asyncio.wait_for(asyncio.shield(pusher), 60)  # the viewer reads nothing meanwhile
            assert held_back, "the VNC server wrote everything to a viewer that read nothing: nothing held it back"
            assert vnc.pushed < BOUND, f"{vnc.pushed} bytes in flight before the gateway held the server back"
            sent = vnc.pushed
            received = bytearray()
            while len(received) < sent:
                data = await asyncio.wait_for(ws.recv(), 10)
                assert isinstance(data, bytes)
                received += data
            assert received == pattern(0, sent), "bytes were lost, reordered or changed while held back"
        outcome = await asyncio.wait_for(outcomes.get(), 10)
    assert outcome.ended is Ended.CLIENT_GONE and outcome.stats.to_client >= sent


async def test_a_vnc_server_that_takes_no_input_holds_the_viewer_back_then_ends_the_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay_module, "WRITE_STALL", 3.0)
    vnc = Vnc(reading=False)
    async with gateway(vnc) as (url, outcomes):
        async with await viewer(url, vnc, max_size=None) as ws:
            sent, blob = 0, bytes(CHUNK)
            await ws.send(struct.pack(">BxxxI", 6, 0x7FFFFFFF))  # a 2 GiB clipboard: its bytes are streamed
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                while sent < (512 << 20):
                    await asyncio.wait_for(ws.send(blob), STALLED)  # held back once the gateway stops reading
                    sent += CHUNK
            assert sent < BOUND, f"the viewer sent {sent} bytes to a VNC server that read none: no backpressure"
            outcome = await asyncio.wait_for(outcomes.get(), 30)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
    assert outcome.ended is Ended.SANDBOX_ERROR and "took no input" in outcome.detail
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4502


async def test_a_resize_behind_a_backlog_waits_for_it_and_arrives_in_order() -> None:
    """A SetDesktopSize goes out only once everything before it has left (so it starts a TCP segment: TigerVNC 1.12
    misreads a split header): behind 8 MiB the VNC server has not read yet, it waits, and then everything arrives,
    in order, nothing lost; what the viewer sent after it too."""
    go = asyncio.Event()

    class SlowVnc(Vnc):
        async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await serve_rfb_handshake(reader, writer)
            self.ready.set()
            await go.wait()
            try:
                while data := await reader.read(CHUNK):
                    self.got.extend(data)
            finally:
                self.eof.set()
                writer.close()

    vnc = SlowVnc()
    start = NOVNC_START + desktop_size(800, 600, [(0, 0, 0, 800, 600, 0)])
    clip = struct.pack(">BxxxI", 6, 8 << 20) + bytes(8 << 20)
    later = desktop_size(640, 480, [(0, 0, 0, 640, 480, 0)]) + struct.pack(">BBxxI", 4, 1, 0x61)
    async with gateway(vnc) as (url, outcomes):
        async with await viewer(url, vnc) as ws:
            await ws.send(start)
            sender = asyncio.create_task(ws.send(clip + later))
            await asyncio.sleep(0.2)  # (let the backlog build; the outcome does not depend on it)
            go.set()
            await asyncio.wait_for(sender, 30)
            want = FBUR + start + clip + later
            for _ in range(3000):
                if len(vnc.got) >= len(want):
                    break
                await asyncio.sleep(0.01)
        outcome = await asyncio.wait_for(outcomes.get(), 10)
    assert bytes(vnc.got) == want
    assert outcome.ended is Ended.CLIENT_GONE, outcome.detail


async def test_text_frames_are_relayed_as_latin1_and_invalid_utf8_closes_1007() -> None:
    vnc = Vnc()
    async with gateway(vnc) as (url, outcomes):
        async with await viewer(url, vnc) as ws:
            await ws.send("\x04é\x00\x00\x00\x00\x00a")  # a KeyEvent as text: relayed as its Latin-1 bytes
            await ws.send(b"\xff\xfe", text=True)  # not UTF-8
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        outcome = await asyncio.wait_for(outcomes.get(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert outcome.ended is Ended.CLIENT_GONE
    await asyncio.wait_for(vnc.eof.wait(), 10)
    assert bytes(vnc.got) == FBUR + b"\x04\xe9\x00\x00\x00\x00\x00a"


async def test_the_sandbox_closing_ends_the_relay_with_1000_after_what_it_sent() -> None:
    vnc = Vnc()
    async with gateway(vnc) as (url, outcomes):
        async with await viewer(url, vnc) as ws:
            assert vnc.writer is not None
            vnc.writer.write(b"last words")
            vnc.writer.close()
            received = bytearray()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    data = await asyncio.wait_for(ws.recv(), 10)
                    assert isinstance(data, bytes)
                    received += data
        outcome = await asyncio.wait_for(outcomes.get(), 10)
    assert bytes(received) == b"last words", "what the server sent before closing was lost"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert outcome.ended is Ended.SANDBOX_EOF


async def test_a_viewer_leaving_closes_the_gateways_vnc_connection() -> None:
    vnc = Vnc()
    async with gateway(vnc) as (url, outcomes):
        ws = await viewer(url, vnc)
        await ws.close()  # the viewer leaves once the relay runs
        await asyncio.wait_for(vnc.eof.wait(), 10)  # the server saw the gateway's side close
        assert (await asyncio.wait_for(outcomes.get(), 10)).ended is Ended.CLIENT_GONE


async def test_a_viewer_flooding_pings_without_reading_is_held_back() -> None:
    """Every ping earns a pong; a viewer that never reads would pile them up in the gateway's memory. A raw client
    (tests/rawws.py): the upgrade, then masked 125-byte pings and not one byte read."""
    loop = asyncio.get_running_loop()
    vnc = Vnc()
    async with gateway(vnc) as (url, _):
        port = int(url.split(":")[2].split("/")[0])
        sock, _ = await asyncio.to_thread(rawws.connect, "127.0.0.1", port, "/ws")
        sock.setblocking(False)
        try:
            batch, sent = rawws.frame(rawws.OP_PING, bytes(125)) * 512, 0
            with contextlib.suppress(TimeoutError):
                while sent < (128 << 20):
                    await asyncio.wait_for(loop.sock_sendall(sock, batch), STALLED)
                    sent += len(batch)
            assert sent < BOUND, f"the gateway read {sent} bytes of pings from a viewer that read none of its pongs"
        finally:
            sock.close()


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_frame_header_matches_the_websocket_librarys_own_framing(length: int) -> None:
    data = pattern(0, length)
    assert frame_header(length) + data == Frame(Opcode.BINARY, data).serialize(mask=False, extensions=[])
