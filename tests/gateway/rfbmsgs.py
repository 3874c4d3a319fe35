"""RFB client→server messages for the gateway's tests: hypothesis strategies (every type the gateway knows, with
fields and announced encodings that sometimes meet the specification's preconditions and sometimes do not), stream
splits, and `Strict`: an independent model of a strict VNC server (TigerVNC's message set) that judges whole messages.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

EXT_CLIPBOARD = -1063131698
PSEUDO = [0, 7, 16, -223, -258, -259, -308, -309, -312, -313, EXT_CLIPBOARD]
ALL_PSEUDO = (0, -223, -258, -308, -312, -313, EXT_CLIPBOARD)  # what noVNC announces that the gateway checks
VALID_FORMATS = [  # bpp, depth, big-endian, true colour, maxima, shifts
    struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0),
    struct.pack(">BBBBHHHBBBxxx", 16, 16, 0, 1, 31, 63, 31, 11, 5, 0),
    struct.pack(">BBBBHHHBBBxxx", 8, 8, 0, 1, 7, 7, 3, 0, 3, 6),
    struct.pack(">BBBBHHHBBBxxx", 8, 8, 0, 0, 0, 0, 0, 0, 0, 0),  # colour map
]
INVALID_FORMATS = [
    struct.pack(">BBBBHHHBBBxxx", 24, 24, 0, 1, 255, 255, 255, 16, 8, 0),  # 24 bpp
    struct.pack(">BBBBHHHBBBxxx", 16, 24, 0, 1, 255, 255, 255, 16, 8, 0),  # depth > bpp
    struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 254, 255, 255, 16, 8, 0),  # max not 2^n-1
    struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 8, 8, 0),  # overlapping shifts
    struct.pack(">BBBBHHHBBBxxx", 16, 16, 0, 0, 0, 0, 0, 0, 0, 0),  # colour map, depth 16
]


def set_encodings(*encodings: int) -> bytes:
    return struct.pack(">BxH", 2, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings)


def fb_request(incremental: int = 0, w: int = 16, h: int = 16) -> bytes:
    return struct.pack(">BBHHHH", 3, incremental, 0, 0, w, h)


def desktop_size(w: int, h: int, screens: list[tuple[int, int, int, int, int, int]]) -> bytes:
    body = b"".join(struct.pack(">IHHHHI", *s) for s in screens)
    return struct.pack(">BxHHBx", 251, w, h, len(screens)) + body


NOVNC_START = set_encodings(*ALL_PSEUDO) + fb_request(0)  # what a viewer sends first so that everything is allowed


def _msg(kind: int, body: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return body.map(lambda b: bytes([kind]) + b)


def _fixed(kind: int, size: int) -> st.SearchStrategy[bytes]:
    return _msg(kind, st.binary(min_size=size - 1, max_size=size - 1))


@st.composite
def _pixel_format(draw: st.DrawFn) -> bytes:
    return b"\0\0\0\0" + draw(st.sampled_from(VALID_FORMATS + INVALID_FORMATS))


@st.composite
def _set_encodings(draw: st.DrawFn) -> bytes:
    chosen = draw(st.lists(st.one_of(st.sampled_from(PSEUDO), st.integers(-(2**31), 2**31 - 1)), max_size=12))
    return set_encodings(*chosen)


@st.composite
def _fb_request(draw: st.DrawFn) -> bytes:
    return fb_request(draw(st.integers(0, 1)), draw(st.integers(0, 2000)), draw(st.integers(0, 2000)))


@st.composite
def _cut_text(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 300))
    length = -n if draw(st.booleans()) else n  # negative: extended clipboard
    return struct.pack(">B3si", 6, draw(st.binary(min_size=3, max_size=3)), length) + draw(
        st.binary(min_size=n, max_size=n)
    )


@st.composite
def _fence(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 80))
    return struct.pack(">B3sIB", 248, b"\0\0\0", draw(st.integers(0, 2**32 - 1)), n) + draw(
        st.binary(min_size=n, max_size=n)
    )


@st.composite
def _desktop_size(draw: st.DrawFn) -> bytes:
    side = st.one_of(st.sampled_from([0, 1, 390, 640, 844, 1280, 8192, 9000]), st.integers(0, 65535))
    w, h = draw(side), draw(side)
    if draw(st.booleans()):  # a plausible layout: one screen filling the desktop
        return desktop_size(w, h, [(draw(st.integers(0, 3)), 0, 0, w, h, 0)])
    n = draw(st.integers(0, 18))
    screen = st.tuples(st.integers(0, 2), *[st.integers(0, 1300)] * 4, st.integers(0, 2**32 - 1))
    return desktop_size(w, h, draw(st.lists(screen, min_size=n, max_size=n)))


@st.composite
def _qemu(draw: st.DrawFn) -> bytes:
    sub = draw(st.sampled_from([0, 0, 1, 2]))
    if sub == 0:
        return struct.pack(">BBHII", 255, 0, draw(st.integers(0, 1)), 0x61, draw(st.integers(0, 0x1E)))
    return struct.pack(">BBH", 255, sub, draw(st.integers(0, 2)))


MESSAGE = st.one_of(
    _pixel_format(),
    _set_encodings(),
    _fb_request(),
    _fixed(4, 8),  # KeyEvent
    _fixed(5, 6),  # PointerEvent
    _cut_text(),
    _fixed(150, 10),  # EnableContinuousUpdates
    _fence(),
    _desktop_size(),
    _qemu(),
    st.just(struct.pack(">BxBB", 250, 1, 2)),  # xvp shutdown
    st.integers(7, 149).map(lambda k: bytes([k]) + bytes(7)),  # types nobody here takes
)


@st.composite
def _plausible_resize(draw: st.DrawFn) -> bytes:
    w, h = draw(st.integers(200, 1600)), draw(st.integers(200, 1200))
    return desktop_size(w, h, [(draw(st.integers(0, 1)), 0, 0, w, h, 0)])


PLAUSIBLE = st.one_of(  # well-formed messages a real viewer could send, announced or not
    st.sampled_from(VALID_FORMATS).map(lambda f: b"\0\0\0\0" + f),
    st.lists(st.sampled_from(PSEUDO), max_size=8).map(lambda e: set_encodings(*e)),
    st.integers(0, 1).map(lambda i: fb_request(i, 64, 64)),
    st.just(struct.pack(">BBxxI", 4, 1, 0xFFE1) + struct.pack(">BBxxI", 4, 0, 0xFFE1)),
    st.integers(0, 2000).map(lambda x: struct.pack(">BBHH", 5, 0, x, x)),
    st.binary(max_size=40).map(lambda t: struct.pack(">BxxxI", 6, len(t)) + t),
    st.just(bytes.fromhex("06000000fffffff81f00000100000000")),  # noVNC's extended clipboard caps
    st.integers(0, 1).map(lambda on: struct.pack(">BBHHHH", 150, on, 0, 0, 64, 64)),
    st.integers(0, 64).map(lambda n: struct.pack(">BxxxIB", 248, 0x80000000, n) + bytes(n)),
    _plausible_resize(),
    st.just(struct.pack(">BBHII", 255, 0, 1, 0xFFE1, 0x2A)),
)


def plausible() -> st.SearchStrategy[list[bytes]]:
    """Lists of well-formed messages: what reaches the server depends only on what was announced."""
    return st.lists(PLAUSIBLE, min_size=1, max_size=12)


def messages() -> st.SearchStrategy[list[bytes]]:
    """Message lists that often start the way noVNC does (everything announced), so that later messages meet
    their preconditions as often as not."""
    return st.tuples(st.booleans(), st.lists(MESSAGE, max_size=30)).map(
        lambda t: ([set_encodings(*ALL_PSEUDO), fb_request(0)] if t[0] else []) + t[1]
    )


def split(stream: bytes, data: st.DataObject) -> list[bytes]:
    """`stream` cut into pieces at points hypothesis chooses (1 byte to all of it)."""
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=40))))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


INPUT_TYPES = {4, 5, 6, 251, 255}


@dataclass
class Strict:
    """A strict VNC server's reading of the specification (written apart from the gateway's filter): `ok(msg)`
    says whether a whole message may be sent now, and updates what the client announced."""

    announced: set[int] = field(default_factory=set)
    layout_sent: bool = False

    def ok(self, msg: bytes) -> bool:
        kind = msg[0]
        a = self.announced
        if kind == 0:
            return msg[4:] in VALID_FORMATS
        if kind == 2:
            n = struct.unpack(">H", msg[2:4])[0]
            self.announced = set(struct.unpack(f">{n}i", msg[4:]))
            self.layout_sent = self.layout_sent and -308 in self.announced
            return True
        if kind == 3:
            self.layout_sent = self.layout_sent or (msg[1] == 0 and -308 in a)
            return True
        if kind in (4, 5):
            return True
        if kind == 6:
            length = struct.unpack(">i", msg[4:8])[0]
            return length >= 0 or (EXT_CLIPBOARD in a and length <= -4)
        if kind == 150:
            return {-312, -313} <= a
        if kind == 248:
            return -312 in a and msg[8] <= 64
        if kind == 251:
            return self.layout_sent and self._layout_valid(msg)
        if kind == 255:
            return msg[1] == 0 and -258 in a
        return False

    @staticmethod
    def _layout_valid(msg: bytes) -> bool:
        w, h, n = struct.unpack(">HHB", msg[2:7])
        if not (1 <= n <= 16 and 1 <= w <= 8192 and 1 <= h <= 8192 and w * h <= 4096 * 4096):
            return False
        screens = [struct.unpack(">IHHHHI", msg[8 + 16 * i : 24 + 16 * i]) for i in range(n)]
        ids = [s[0] for s in screens]
        inside = all(sw and sh and x + sw <= w and y + sh <= h for _, x, y, sw, sh, _ in screens)
        return inside and len(set(ids)) == len(ids)


def enlarged(msg: bytes, min_w: int = 500, min_h: int = 46) -> bytes:
    """A SetDesktopSize smaller than Chromium's smallest window (500×46), as the gateway forwards it: both sides
    times the factor that makes it fit (unless that passes 8192 a side or 4096² pixels: then each side raised on
    its own), screens scaled by the same factors."""
    w, h, n = struct.unpack(">HHB", msg[2:7])
    if w >= min_w and h >= min_h:
        return msg
    f = max(min_w / w, min_h / h)
    nw, nh = max(min_w, round(w * f)), max(min_h, round(h * f))
    if max(nw, nh) > 8192 or nw * nh > 4096 * 4096:
        nw, nh = max(w, min_w), max(h, min_h)
    screens = []
    for i in range(n):
        sid, x, y, sw, sh, flags = struct.unpack(">IHHHHI", msg[8 + 16 * i : 24 + 16 * i])
        sx, sy = x * nw // w, y * nh // h
        screens.append(
            (sid, sx, sy, min(nw - sx, max(1, round(sw * nw / w))), min(nh - sy, max(1, round(sh * nh / h))), flags)
        )
    return struct.pack(">BxHHBx", 251, nw, nh, n) + b"".join(struct.pack(">IHHHHI", *s) for s in screens)


def expected(msgs: list[bytes], view: bool) -> tuple[bytes, bool]:
    """What the gateway must forward for whole messages `msgs` (view scope drops input; a small desktop size is
    enlarged), and whether it must refuse one (then nothing from that one on is forwarded)."""
    server = Strict()
    out = b""
    for m in msgs:
        if not server.ok(m):
            return out, True
        if not (view and m[0] in INPUT_TYPES):
            out += enlarged(m) if m[0] == 251 else m
    return out, False


def strict_lengths(out: bytes, pos: int) -> int:
    """The length of the message at `pos` of a forwarded stream, by the specification (types the server takes)."""
    kind = out[pos]
    fixed = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10, 255: 12}
    if kind in fixed:
        return fixed[kind]
    if kind == 2:
        return 4 + 4 * int(struct.unpack(">H", out[pos + 2 : pos + 4])[0])
    if kind == 6:
        return 8 + abs(int(struct.unpack(">i", out[pos + 4 : pos + 8])[0]))
    if kind == 248:
        return 9 + out[pos + 8]
    if kind == 251:
        return 8 + 16 * out[pos + 6]
    raise AssertionError(f"message type {kind} forwarded")
