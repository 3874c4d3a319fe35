"""Hypothesis strategies for RFB client→server messages (every type hearth's gateway knows) and stream splits."""

from __future__ import annotations

import itertools
import struct

from hypothesis import strategies as st


def _msg(kind: int, body: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return body.map(lambda b: bytes([kind]) + b)


def _fixed(kind: int, size: int) -> st.SearchStrategy[bytes]:
    return _msg(kind, st.binary(min_size=size - 1, max_size=size - 1))


@st.composite
def _set_encodings(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 12))
    return struct.pack(">BBH", 2, draw(st.integers(0, 255)), n) + draw(st.binary(min_size=4 * n, max_size=4 * n))


@st.composite
def _cut_text(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 300))
    length = -n if draw(st.booleans()) else n  # negative: extended clipboard
    return struct.pack(">B3si", 6, draw(st.binary(min_size=3, max_size=3)), length) + draw(
        st.binary(min_size=n, max_size=n)
    )


@st.composite
def _fence(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 64))
    return struct.pack(">B3sIB", 248, b"\0\0\0", draw(st.integers(0, 2**32 - 1)), n) + draw(
        st.binary(min_size=n, max_size=n)
    )


@st.composite
def _desktop_size(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 4))
    return struct.pack(">BxHHBx", 251, 800, 600, n) + draw(st.binary(min_size=16 * n, max_size=16 * n))


MESSAGE = st.one_of(
    _fixed(0, 20),  # SetPixelFormat
    _set_encodings(),
    _fixed(3, 10),  # FramebufferUpdateRequest
    _fixed(4, 8),  # KeyEvent
    _fixed(5, 6),  # PointerEvent
    _cut_text(),
    _fixed(150, 10),  # EnableContinuousUpdates
    _fence(),
    _desktop_size(),
    _fixed(255, 12),  # QEMU extended key event
)


def messages() -> st.SearchStrategy[list[bytes]]:
    return st.lists(MESSAGE, max_size=30)


def split(stream: bytes, data: st.DataObject) -> list[bytes]:
    """`stream` cut into pieces at points hypothesis chooses (1 byte to all of it)."""
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=40))))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]
