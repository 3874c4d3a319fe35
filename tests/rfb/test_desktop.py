"""hearth/rfb/desktop.py against a real Xvnc on loopback: the server's layout, a resize and its answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from hearth.rfb.client import ServerInit, handshake
from hearth.rfb.desktop import REASON_SERVER, resize, screen_layout
from tests.xvnc import local_xvnc


@pytest.fixture
def xvnc() -> Iterator[int]:
    with local_xvnc(800, 600) as (port, _):
        yield port


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.read, self.writer = reader.readexactly, writer

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[Conn, ServerInit]]:
    """An RFB connection to the local Xvnc, handshake done."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    conn = Conn(reader, writer)
    try:
        yield conn, await asyncio.wait_for(handshake(conn.read, conn.write), 10)
    finally:
        writer.close()


async def test_layout_then_resize_then_a_new_client_sees_it(xvnc: int) -> None:
    async with connect(xvnc) as (conn, init):
        layout = await asyncio.wait_for(screen_layout(conn.read, conn.write), 10)
        assert (init.width, init.height) == (layout.width, layout.height) == (800, 600)
        assert layout.reason == REASON_SERVER and len(layout.screens) == 1
        first = layout.screens[0]
    async with connect(xvnc) as (conn, _):
        assert await asyncio.wait_for(resize(conn.read, conn.write, 640, 480), 10) == 0
    async with connect(xvnc) as (conn, init):
        assert (init.width, init.height) == (640, 480)
        again = await asyncio.wait_for(screen_layout(conn.read, conn.write), 10)
        assert again.screens[0].id == first.id and (again.screens[0].width, again.screens[0].height) == (640, 480)
        assert await asyncio.wait_for(resize(conn.read, conn.write, 640, 480), 10) == 0  # already: nothing asked


async def test_resize_asks_nothing_when_told_not_to_proceed(xvnc: int) -> None:
    async with connect(xvnc) as (conn, _):
        assert await asyncio.wait_for(resize(conn.read, conn.write, 700, 500, proceed=lambda: False), 10) is None
    async with connect(xvnc) as (_, init):
        assert (init.width, init.height) == (800, 600)
