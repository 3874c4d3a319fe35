"""The warm pool's standby connections to its desktops (hearth/session/standby.py): held once dialled and
handshaken, taken once (with the server's ServerInit), forgotten when the server closes them, never kept when the
desktop cannot be reached or does not answer, all closed by `close`. (The viewer route relaying a session's first
viewer over one: tests/gateway/test_early_greeting.py.)

Loopback RFB servers (tests/gateway/test_websocket.py's handshake) stand in for the sandbox's Xvnc.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from hearth.lifecycle.readiness import Target
from hearth.session.standby import Standby
from tests.gateway.test_websocket import SERVER_INIT, serve_rfb_handshake
from tests.waits import eventually


class Vnc:
    """A loopback RFB server counting its connections; what each sends after the handshake is kept."""

    def __init__(self, handshake: bool = True, close_after: bool = False) -> None:
        self.handshake, self.close_after = handshake, close_after
        self.connections = 0
        self.received = bytearray()
        self.ended = 0  # connections whose client closed them (EOF)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.handshake:
                await serve_rfb_handshake(reader, writer)
                await writer.drain()
            if self.close_after:
                return
            while data := await reader.read(65536):
                self.received += data
            self.ended += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.ended += 1
        finally:
            writer.close()


@asynccontextmanager
async def vnc_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[Target]:
    """A loopback server running `serve` per connection, as a desktop's target; closed on exit."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield Target(None, "127.0.0.1", server.sockets[0].getsockname()[1], 0)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_held_connection_is_taken_once_with_its_server_init() -> None:
    vnc, standby = Vnc(), Standby()
    async with vnc_server(vnc.serve) as target:
        assert await standby.hold(target)
        assert standby.holds(target) and len(standby) == 1
        assert not await standby.hold(target)  # held already: no second dial
        assert vnc.connections == 1
        got = standby.take(target)
        assert got is not None
        sandbox, init = got
        assert init.raw == SERVER_INIT and init.name == "vnc"
        assert standby.take(target) is None and not standby.holds(target)  # once
        await sandbox.write(b"\x03\x00")  # the connection is live: what the taker writes reaches the server
        await eventually(lambda: bytes(vnc.received) == b"\x03\x00", 10, "the taker's bytes at the server")
        await sandbox.close()
        await eventually(lambda: vnc.ended == 1, 10, "the server seeing the taker's close")
        await standby.close()


async def test_a_connection_its_server_closed_is_forgotten() -> None:
    vnc, standby = Vnc(close_after=True), Standby()
    async with vnc_server(vnc.serve) as target:
        assert await standby.hold(target)  # handshaken, then the server goes (its sandbox ended)

        def forgotten() -> bool:
            assert not standby.holds(target) and len(standby) == 0
            return True

        await eventually(forgotten, 10, "the closed connection forgotten")
        assert standby.take(target) is None  # the route then dials as usual


async def test_an_unreachable_or_silent_desktop_is_not_held() -> None:
    standby = Standby(dial_timeout=2.0, handshake_timeout=0.3)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nothing listens there
    assert not await standby.hold(Target(None, "127.0.0.1", closed_port, 0))
    silent = Vnc(handshake=False)  # accepts, never speaks RFB
    async with vnc_server(silent.serve) as target:
        assert not await standby.hold(target)
        assert len(standby) == 0
        await eventually(lambda: silent.ended == 1, 10, "the silent server's connection closed, not kept")
    no_desktop = Target(None, "127.0.0.1", closed_port, 0, desktop=False)
    assert not await standby.hold(no_desktop)


async def test_close_ends_every_held_connection_and_holds_no_more() -> None:
    first, second, standby = Vnc(), Vnc(), Standby()
    async with vnc_server(first.serve) as a, vnc_server(second.serve) as b:
        assert await standby.hold(a) and await standby.hold(b) and len(standby) == 2
        await standby.close()
        assert len(standby) == 0
        await eventually(lambda: first.ended == second.ended == 1, 10, "both servers seeing the close")
        assert not await standby.hold(a)  # after close nothing is kept
        assert first.connections == 1
