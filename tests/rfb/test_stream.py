"""SandboxStream before the splice: exact reads over any split, a clean error at EOF, and a bounded buffer when the
VNC server sends more than the handshake reads. A real loopback server; nothing mocked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from hearth.fabric.dial import open_protocol
from hearth.rfb.stream import HANDSHAKE_BUFFER, SandboxStream

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def dial(serve: Serve) -> tuple[SandboxStream, asyncio.Server]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    stream = await open_protocol(None, "127.0.0.1", server.sockets[0].getsockname()[1], 5.0, SandboxStream)
    return stream, server


async def test_exact_reads_over_any_split_then_incomplete_read_at_eof() -> None:
    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in (b"RF", b"B 003.0", b"08\nab"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    stream, server = await dial(serve)
    try:
        assert await stream.readexactly(12) == b"RFB 003.008\n"
        with pytest.raises(asyncio.IncompleteReadError) as err:
            await asyncio.wait_for(stream.readexactly(3), 10)
        assert err.value.partial == b"ab"
        assert await asyncio.wait_for(asyncio.shield(stream.ended), 10) is None  # EOF, not an error
        with pytest.raises(ConnectionResetError):
            await stream.write(b"x")  # a closed connection is an error, not a silent drop
    finally:
        await stream.close()
        server.close()


async def test_a_server_sending_ahead_of_the_handshake_is_held_back_then_read_whole() -> None:
    total = 16 * HANDSHAKE_BUFFER
    written: list[int] = [0]
    held = asyncio.Event()

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while written[0] < total:
            writer.write(bytes([written[0] // 65536 % 256]) * 65536)
            written[0] += 65536
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except TimeoutError:
                held.set()  # the gateway stopped reading: its buffer is bounded
                await writer.drain()
        writer.close()

    stream, server = await dial(serve)
    try:
        await asyncio.wait_for(held.wait(), 30)
        assert written[0] < total, "the stream read everything the server sent before anyone asked for it"
        got = bytearray()
        while len(got) < total:
            got += await asyncio.wait_for(stream.readexactly(65536), 10)
        assert got == b"".join(bytes([i % 256]) * 65536 for i in range(total // 65536))
    finally:
        await stream.close()
        server.close()


async def test_drained_only_once_everything_written_has_left() -> None:
    """While the VNC server reads nothing, bytes wait in the gateway's queue or the kernel's: not drained; once it
    has read them, drained (the relay then writes a SetDesktopSize as a TCP segment of its own)."""
    go, got = asyncio.Event(), bytearray()
    total = 8 << 20

    async def serve(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await go.wait()
        while len(got) < total and (data := await reader.read(1 << 16)):
            got.extend(data)

    stream, server = await dial(serve)
    try:
        assert stream.drained()
        stream.send_now(bytes(total))  # far more than socket buffers hold
        await asyncio.sleep(0)
        assert not stream.drained()
        go.set()
        for _ in range(1000):
            if len(got) == total and stream.drained():
                break
            await asyncio.sleep(0.01)
        assert len(got) == total and stream.drained()
    finally:
        await stream.close()
        server.close()
        await server.wait_closed()
