"""What the RFB specification (rfbproto) asks of a viewer's messages, and what the sandbox's VNC server handles.

Facts only — the streaming filter that applies them is hearth/gateway/viewonly.py. Every client→server message the
gateway knows is here with its precondition: the pseudo-encodings the viewer must have announced in its latest
SetEncodings (which replaces the previous list, in the specification as in TigerVNC's ClientParams::setEncodings)
and the fields that must be sane. A message type or QEMU submessage the VNC server does not handle is refused too:
TigerVNC 1.12 drops the connection on one, and a message the gateway cannot frame would desynchronise it.

Measured against Xvnc (TigerVNC 1.12.0) on loopback: SetDesktopSize without ExtendedDesktopSize announced
segfaults it (SMsgWriter::writeDesktopSize, every viewer drops); with it announced a 16384×16384 request is granted
(a 1 GiB framebuffer); EnableContinuousUpdates without Fence, a Fence without the Fence pseudo-encoding, QEMU audio
and xvp each end that viewer's connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum


class Msg(IntEnum):
    """Client→server message types (rfbproto "Client to Server Messages")."""

    SET_PIXEL_FORMAT = 0
    SET_ENCODINGS = 2
    FB_UPDATE_REQUEST = 3
    KEY_EVENT = 4
    POINTER_EVENT = 5
    CLIENT_CUT_TEXT = 6
    ENABLE_CONTINUOUS_UPDATES = 150
    CLIENT_FENCE = 248
    XVP = 250
    SET_DESKTOP_SIZE = 251
    GII = 253
    QEMU = 255


class Pseudo(IntEnum):
    """Pseudo-encodings whose announcement (SetEncodings) a client message depends on."""

    DESKTOP_SIZE = -223
    QEMU_EXTENDED_KEY = -258
    QEMU_AUDIO = -259
    EXTENDED_DESKTOP_SIZE = -308
    XVP = -309
    FENCE = -312
    CONTINUOUS_UPDATES = -313
    EXTENDED_CLIPBOARD = -1063131698  # 0xC0A1E5CE


class Qemu(IntEnum):
    """QEMU client message submessage types."""

    EXTENDED_KEY = 0
    AUDIO = 1


# What each message needs announced (all of them). EnableContinuousUpdates: the server tells a client it supports
# them with EndOfContinuousUpdates, which TigerVNC only sends (and only accepts the message) once Fence is announced
# too. SetDesktopSize additionally needs an ExtendedDesktopSize rectangle received (tracked by the filter).
NEEDS: dict[int, tuple[Pseudo, ...]] = {
    Msg.ENABLE_CONTINUOUS_UPDATES: (Pseudo.CONTINUOUS_UPDATES, Pseudo.FENCE),
    Msg.CLIENT_FENCE: (Pseudo.FENCE,),
    Msg.XVP: (Pseudo.XVP,),
    Msg.SET_DESKTOP_SIZE: (Pseudo.EXTENDED_DESKTOP_SIZE,),
}
QEMU_NEEDS = {Qemu.EXTENDED_KEY: Pseudo.QEMU_EXTENDED_KEY, Qemu.AUDIO: Pseudo.QEMU_AUDIO}
INPUT = frozenset({Msg.KEY_EVENT, Msg.POINTER_EVENT, Msg.CLIENT_CUT_TEXT, Msg.SET_DESKTOP_SIZE, Msg.QEMU})
FIXED: dict[int, int] = {  # whole-message sizes of the fixed-size messages
    Msg.SET_PIXEL_FORMAT: 20,
    Msg.FB_UPDATE_REQUEST: 10,
    Msg.KEY_EVENT: 8,
    Msg.POINTER_EVENT: 6,
    Msg.ENABLE_CONTINUOUS_UPDATES: 10,
    Msg.XVP: 4,
}
QEMU_KEY_SIZE = 12
MAX_ENCODINGS = 512  # noVNC announces about 30; a longer list is refused rather than buffered
FENCE_PAYLOAD_MAX = 64  # rfbproto: "limited to 64 bytes"
MAX_SCREENS = 16
MAX_SIDE = 8192  # a requested desktop side; MAX_PIXELS bounds the framebuffer (4 bytes a pixel in the sandbox)
MAX_PIXELS = 4096 * 4096
# Chromium's smallest window (its WM_NORMAL_HINTS, measured with Chromium 120+ under Openbox): on a narrower desktop
# its kiosk window sticks out and the page is cut off at the right, so a smaller request is scaled up to it.
MIN_DESKTOP = (500, 46)


class Refused(Exception):
    """A viewer message the gateway does not forward: the connection is closed (4403) with this reason."""


@dataclass(frozen=True)
class ServerProfile:
    """The client messages a VNC server handles (others are refused before they reach it)."""

    name: str
    messages: frozenset[int]
    qemu: frozenset[int]
    extended_clipboard: bool


XVNC = ServerProfile(
    "Xvnc (TigerVNC)",
    frozenset(Msg) - {Msg.XVP, Msg.GII},
    frozenset({Qemu.EXTENDED_KEY}),
    extended_clipboard=True,
)
X11VNC = ServerProfile(  # the older design (libvncserver): core messages, QEMU key events; SetDesktopSize "prohibited"
    "x11vnc",
    frozenset({Msg.SET_PIXEL_FORMAT, Msg.SET_ENCODINGS, Msg.FB_UPDATE_REQUEST, Msg.KEY_EVENT, Msg.POINTER_EVENT})
    | {Msg.CLIENT_CUT_TEXT, Msg.SET_DESKTOP_SIZE, Msg.QEMU},
    frozenset({Qemu.EXTENDED_KEY}),
    extended_clipboard=True,
)
PROFILES = {"xvnc": XVNC, "x11vnc": X11VNC}


def name_of(kind: int) -> str:
    """The specification's name of a message type (SetDesktopSize, ClientFence, …)."""
    try:
        name = Msg(kind).name
    except ValueError:
        return f"type {kind}"
    if name in ("QEMU", "XVP", "GII"):
        return f"{name.lower() if name != 'QEMU' else name} client message"
    return "".join(w.capitalize() for w in name.split("_")).replace("Fb", "Framebuffer")


def missing(needed: tuple[Pseudo, ...], announced: frozenset[int]) -> str:
    """'' when every needed pseudo-encoding was announced, else the names of those that were not."""
    return ", ".join(f"{p.name} ({p.value})" for p in needed if p not in announced)


def check_pixel_format(msg: bytes) -> None:
    """SetPixelFormat (20 bytes): the format must be one a server can convert to (TigerVNC's PixelFormat::isSane)."""
    bpp, depth, _big, true_colour, *maxes = struct.unpack(">BBBBHHH", msg[4:14])
    shifts = msg[14:17]
    if bpp not in (8, 16, 32) or not 1 <= depth <= bpp:
        raise Refused(f"SetPixelFormat: {bpp} bits per pixel, depth {depth} (needs 8/16/32 bpp, depth ≤ bpp)")
    if not true_colour:
        if depth != 8:
            raise Refused("SetPixelFormat: a colour-map format must have depth 8")
        return
    bits = [m.bit_length() for m in maxes]
    if any(m & (m + 1) or m > 255 for m in maxes) or sum(bits) > depth:
        raise Refused(f"SetPixelFormat: colour maxima {maxes} must be 2^n-1, at most 255, fitting depth {depth}")
    masks = [m << s for m, s in zip(maxes, shifts, strict=True)]
    if any(b + s > bpp for b, s in zip(bits, shifts, strict=True)) or masks[0] & masks[1] or masks[0] & masks[2]:
        raise Refused("SetPixelFormat: colour shifts overlap or exceed the pixel size")
    if masks[1] & masks[2]:
        raise Refused("SetPixelFormat: colour shifts overlap or exceed the pixel size")


def desktop_size_length(head: bytes) -> int:
    """SetDesktopSize's whole length from its first 8 bytes; refuses a screen count outside 1..MAX_SCREENS."""
    screens = head[6]
    if not 1 <= screens <= MAX_SCREENS:
        raise Refused(f"SetDesktopSize with {screens} screens (1 to {MAX_SCREENS} allowed)")
    return 8 + 16 * screens


def check_desktop_size(msg: bytes) -> tuple[int, int]:
    """A whole SetDesktopSize: a size within bounds and a layout TigerVNC's ScreenSet::validate accepts (every
    screen non-empty, inside the framebuffer, ids unique); returns (width, height)."""
    width, height = struct.unpack(">HH", msg[2:6])
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise Refused(f"SetDesktopSize {width}x{height}: each side 1 to {MAX_SIDE}, at most {MAX_PIXELS} pixels")
    ids: set[int] = set()
    for i in range(msg[6]):
        sid, x, y, w, h, _flags = struct.unpack(">IHHHHI", msg[8 + 16 * i : 24 + 16 * i])
        if w == 0 or h == 0 or x + w > width or y + h > height or sid in ids:
            raise Refused(f"SetDesktopSize: screen {i} ({w}x{h}+{x}+{y}, id {sid}) is empty, outside or a duplicate")
        ids.add(sid)
    return width, height


def encodings_of(msg: bytes) -> frozenset[int]:
    """The encodings a whole SetEncodings message announces."""
    n = struct.unpack(">H", msg[2:4])[0]
    return frozenset(struct.unpack(f">{n}i", msg[4 : 4 + 4 * n]))


def at_least(msg: bytes, minimum: tuple[int, int] = MIN_DESKTOP) -> bytes:
    """A checked SetDesktopSize asking for less than `minimum`, scaled up to it keeping its aspect ratio (a viewer
    that scales its view then shows all of it, only smaller) — or, where that would exceed the bounds, each side
    raised on its own; the screens are scaled alike. Anything else comes back unchanged."""
    width, height = struct.unpack(">HH", msg[2:6])
    f = max(minimum[0] / width, minimum[1] / height)
    if f <= 1:
        return msg
    new_w, new_h = max(minimum[0], round(width * f)), max(minimum[1], round(height * f))
    if new_w > MAX_SIDE or new_h > MAX_SIDE or new_w * new_h > MAX_PIXELS:
        new_w, new_h = max(width, minimum[0]), max(height, minimum[1])
    out = bytearray(msg[:8])
    struct.pack_into(">HH", out, 2, new_w, new_h)
    for i in range(msg[6]):
        sid, x, y, w, h, flags = struct.unpack(">IHHHHI", msg[8 + 16 * i : 24 + 16 * i])
        nx, ny = x * new_w // width, y * new_h // height
        nw = min(new_w - nx, max(1, round(w * new_w / width)))
        nh = min(new_h - ny, max(1, round(h * new_h / height)))
        out += struct.pack(">IHHHHI", sid, nx, ny, nw, nh, flags)
    return bytes(out)


def prohibited(msg: bytes) -> bytes:
    """In place of a checked SetDesktopSize that may not go through (another viewer owns the size): one the server
    refuses as "prohibited", answering only its sender — the specification has the server answer every request, and
    noVNC asks for no other size until it has heard back. TigerVNC refuses a side over 16384 before anything else
    (VNCServerST::setDesktopSize), libvncserver prohibits every request by default."""
    sid, _x, _y, _w, _h, flags = struct.unpack(">IHHHHI", msg[8:24])
    return struct.pack(">BxHHBx", 251, 65535, 65535, 1) + struct.pack(">IHHHHI", sid, 0, 0, 65535, 65535, flags)
