"""RFB 3.8 client over any byte stream: handshake (security None), ServerInit, raw framebuffer updates.

The transport is two callables so the same code speaks RFB over a TCP stream (readiness gate, doctor) and over a
WebSocket through the gateway (tests, benchmarks).
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

ReadExactly = Callable[[int], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]

SEC_NONE = 1
ENC_RAW = 0
# 32 bpp, depth 24, little endian, true colour, 8 bits per channel: red at 16, green at 8, blue at 0.
PIXEL_FORMAT_32 = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


MAX_TEXT = 64 * 1024  # a desktop name or refusal reason longer than this is a hostile server, not a long name


class RfbError(Exception):
    """The peer did not speak RFB as expected."""


@dataclass(frozen=True)
class ServerInit:
    version: str
    width: int
    height: int
    name: str
    raw: bytes = b""  # the ServerInit message as the server sent it (the gateway hands it on to the viewer)


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int
    pixels: bytes  # raw, 4 bytes per pixel in PIXEL_FORMAT_32

    def non_blank(self) -> bool:
        """True when the rectangle holds more than one colour (a drawn desktop, not an empty framebuffer)."""
        if len(self.pixels) < 8:
            return False
        first = self.pixels[:3]
        return any(self.pixels[i : i + 3] != first for i in range(0, len(self.pixels), 4))


async def read_banner(read: ReadExactly) -> str:
    banner = await read(12)
    if not banner.startswith(b"RFB ") or not banner.endswith(b"\n"):
        raise RfbError(f"not an RFB server: first bytes {banner[:12]!r}")
    return banner.decode("ascii").strip()


async def handshake(read: ReadExactly, write: Write, shared: bool = True) -> ServerInit:
    """Version 3.8, security None, ClientInit; returns the ServerInit."""
    version = await read_banner(read)
    await write(b"RFB 003.008\n")
    (count,) = struct.unpack(">B", await read(1))
    if count == 0:
        raise RfbError(f"server refused: {await _reason(read)}")
    types = list(await read(count))
    if SEC_NONE not in types:
        raise RfbError(f"server offers security types {types}, hearth needs None (1) inside the fabric")
    await write(bytes([SEC_NONE]))
    (result,) = struct.unpack(">I", await read(4))
    if result != 0:
        raise RfbError(f"security handshake failed: {await _reason(read)}")
    await write(bytes([1 if shared else 0]))
    head = await read(24)  # width, height, server pixel format (we set our own below), name length
    width, height = struct.unpack(">HH", head[:4])
    (name_len,) = struct.unpack(">I", head[20:24])
    if name_len > MAX_TEXT:
        raise RfbError(f"server announced a {name_len}-byte desktop name (more than {MAX_TEXT})")
    raw_name = await read(name_len)
    return ServerInit(version, width, height, raw_name.decode("utf-8", "replace"), head + raw_name)


async def request_frame(read: ReadExactly, write: Write, init: ServerInit, max_messages: int = 50) -> list[Rect]:
    """Ask for a full (non-incremental) raw update and return its rectangles."""
    await write(struct.pack(">Bxxx", 0) + PIXEL_FORMAT_32)
    await write(struct.pack(">BxHi", 2, 1, ENC_RAW))
    await write(struct.pack(">BBHHHH", 3, 0, 0, 0, init.width, init.height))
    for _ in range(max_messages):
        (kind,) = struct.unpack(">B", await read(1))
        if kind == 0:  # FramebufferUpdate
            await read(1)
            (nrects,) = struct.unpack(">H", await read(2))
            rects = []
            for _ in range(nrects):
                x, y, w, h, enc = struct.unpack(">HHHHi", await read(12))
                if enc != ENC_RAW:
                    raise RfbError(f"server sent encoding {enc} though only raw was allowed")
                rects.append(Rect(x, y, w, h, await read(w * h * 4)))
            return rects
        if kind == 1:  # SetColourMapEntries
            await read(1)
            _, n = struct.unpack(">HH", await read(4))
            await read(6 * n)
        elif kind == 2:  # Bell
            continue
        elif kind == 3:  # ServerCutText
            await read(3)
            (n,) = struct.unpack(">I", await read(4))
            await read(n)
        else:
            raise RfbError(f"unexpected server message type {kind}")
    raise RfbError("no FramebufferUpdate received")


async def _reason(read: ReadExactly) -> str:
    (n,) = struct.unpack(">I", await read(4))
    if n > MAX_TEXT:
        return f"(a {n}-byte reason, not read)"
    return (await read(n)).decode("utf-8", "replace")
