"""The desktop's size over RFB (ExtendedDesktopSize, rfbproto): read the server's screen layout and ask for a size.

Used by the gateway to put a desktop back to its default size when the viewer that resized it leaves
(hearth/gateway/desktop_size.py), and by tests. The caller has completed the handshake (hearth/rfb/client.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from hearth.rfb.client import ENC_RAW, MAX_TEXT, PIXEL_FORMAT_32, ReadExactly, RfbError, Write

EXTENDED_DESKTOP_SIZE = -308
DESKTOP_SIZE = -223
REASON_SERVER, REASON_CLIENT = 0, 1
RESULTS = {0: "success", 1: "prohibited", 2: "out of resources", 3: "invalid screen layout"}


@dataclass(frozen=True)
class Screen:
    id: int
    x: int
    y: int
    width: int
    height: int
    flags: int


@dataclass(frozen=True)
class Layout:
    """An ExtendedDesktopSize rectangle: why it was sent (reason), the outcome (result), size and screens."""

    reason: int
    result: int
    width: int
    height: int
    screens: tuple[Screen, ...]


def set_desktop_size(width: int, height: int, screens: tuple[Screen, ...]) -> bytes:
    """A SetDesktopSize message."""
    body = b"".join(struct.pack(">IHHHHI", s.id, s.x, s.y, s.width, s.height, s.flags) for s in screens)
    return struct.pack(">BxHHBx", 251, width, height, len(screens)) + body


async def read_layouts(read: ReadExactly, max_messages: int = 50) -> list[Layout]:
    """Server messages up to and including the next FramebufferUpdate; returns its ExtendedDesktopSize rectangles.
    Only raw rectangles (32 bpp) and desktop-size pseudo-rectangles are expected (what `screen_layout` announces)."""
    for _ in range(max_messages):
        (kind,) = await read(1)
        if kind == 0:
            await read(1)
            (nrects,) = struct.unpack(">H", await read(2))
            layouts = []
            for _ in range(nrects):
                x, y, w, h, enc = struct.unpack(">HHHHi", await read(12))
                if enc == EXTENDED_DESKTOP_SIZE:
                    (count,) = (await read(4))[:1]
                    raw = await read(16 * count)
                    screens = tuple(Screen(*struct.unpack_from(">IHHHHI", raw, 16 * i)) for i in range(count))
                    layouts.append(Layout(x, y, w, h, screens))
                elif enc == ENC_RAW:
                    await read(w * h * 4)
                elif enc != DESKTOP_SIZE:
                    raise RfbError(f"server sent encoding {enc}, which was not announced")
            return layouts
        if kind == 1:  # SetColourMapEntries
            await read(1)
            _, n = struct.unpack(">HH", await read(4))
            await read(6 * n)
        elif kind == 3:  # ServerCutText
            await read(3)
            (n,) = struct.unpack(">I", await read(4))
            if n > MAX_TEXT:
                raise RfbError(f"server sent a {n}-byte clipboard")
            await read(n)
        elif kind != 2:  # (2: Bell)
            raise RfbError(f"unexpected server message type {kind}")
    raise RfbError(f"no FramebufferUpdate within {max_messages} server messages")


async def screen_layout(read: ReadExactly, write: Write) -> Layout:
    """Announce ExtendedDesktopSize and ask for a 1×1 update: the server answers with its layout."""
    await write(struct.pack(">Bxxx", 0) + PIXEL_FORMAT_32)
    await write(struct.pack(">BxHii", 2, 2, ENC_RAW, EXTENDED_DESKTOP_SIZE))
    await write(struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1))
    for _ in range(10):
        layouts = await read_layouts(read)
        if layouts:
            return layouts[0]
    raise RfbError("the VNC server sent no ExtendedDesktopSize rectangle (it cannot be resized)")


async def resize(
    read: ReadExactly, write: Write, width: int, height: int, proceed: Callable[[], bool] = lambda: True
) -> int | None:
    """Set the desktop to width×height with one screen (the server's first screen's id and flags); returns the
    server's result code (0: success, see RESULTS), or None when `proceed()` said no just before asking."""
    layout = await screen_layout(read, write)
    if (layout.width, layout.height) == (width, height):
        return 0
    first = layout.screens[0] if layout.screens else Screen(0, 0, 0, width, height, 0)
    if not proceed():
        return None
    await write(set_desktop_size(width, height, (Screen(first.id, 0, 0, width, height, first.flags),)))
    for _ in range(10):  # the server answers with the next update, so one is asked for (TigerVNC)
        await write(struct.pack(">BBHHHH", 3, 1, 0, 0, 1, 1))
        for reply in await read_layouts(read):
            if reply.reason == REASON_CLIENT:
                return reply.result
    raise RfbError("the VNC server did not answer SetDesktopSize")
