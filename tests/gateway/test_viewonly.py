from __future__ import annotations

import struct

from hearth.gateway.viewonly import InputFilter

PREAMBLE = b"RFB 003.008\n" + b"\x01" + b"\x01"
SET_ENCODINGS = struct.pack(">BxHii", 2, 2, 0, -223)
FB_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 800, 600)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 10)
CUT = struct.pack(">BxxxI", 6, 5) + b"hello"


def test_input_dropped_everything_else_kept() -> None:
    f = InputFilter()
    stream = PREAMBLE + SET_ENCODINGS + KEY + FB_REQUEST + POINTER + CUT + FB_REQUEST
    assert f.feed(stream) == PREAMBLE + SET_ENCODINGS + FB_REQUEST + FB_REQUEST


def test_split_across_messages_bytewise() -> None:
    f = InputFilter()
    stream = PREAMBLE + KEY + FB_REQUEST + POINTER + SET_ENCODINGS
    out = b"".join(f.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == PREAMBLE + FB_REQUEST + SET_ENCODINGS


def test_unknown_message_is_not_forwarded() -> None:
    f = InputFilter()
    assert f.feed(PREAMBLE + bytes([99, 1, 2, 3]) + KEY) == PREAMBLE


def test_extended_clipboard_with_negative_length_keeps_framing() -> None:
    """noVNC announces extended clipboard caps with a negative ClientCutText length right after connecting."""
    caps = bytes.fromhex("06000000fffffff81f00000100000000")
    for drop in (True, False):
        f = InputFilter(drop_input=drop)
        out = f.feed(PREAMBLE + caps + FB_REQUEST)
        assert out.endswith(FB_REQUEST)
        assert f.saw_update_request


def test_huge_cut_text_is_streamed_not_buffered() -> None:
    """A ClientCutText announcing 2 GiB: control scope forwards its bytes as they come (the VNC server sees the
    length at once and can refuse it); view scope drops them; neither holds more than a header back."""
    header = struct.pack(">BxxxI", 6, 0x7FFFFFFF)
    junk = bytes(range(256)) * 256  # 64 KiB
    control, view = InputFilter(drop_input=False), InputFilter(drop_input=True)
    assert control.feed(PREAMBLE + header) == PREAMBLE + header
    assert view.feed(PREAMBLE + header) == PREAMBLE
    for _ in range(16):  # 1 MiB of "clipboard"
        assert control.feed(junk) == junk
        assert view.feed(junk) == b""
    for f in (control, view):
        assert len(f._buf) < 9


def test_any_chunking_gives_the_same_output() -> None:
    import random

    rng = random.Random(7)
    stream = (
        PREAMBLE
        + SET_ENCODINGS
        + KEY
        + CUT
        + FB_REQUEST
        + POINTER
        + struct.pack(">BxxxIB", 248, 0, 2)
        + b"ab"
        + FB_REQUEST
    )
    for drop in (True, False):
        whole = InputFilter(drop_input=drop).feed(stream)
        for _ in range(50):
            f = InputFilter(drop_input=drop)
            out, i = b"", 0
            while i < len(stream):
                n = rng.randint(1, 12)
                out += f.feed(stream[i : i + n])
                i += n
            assert out == whole
            assert f.saw_update_request


def test_a_watcher_cannot_resize_the_desktop() -> None:
    resize = struct.pack(">BxHHBx", 251, 1024, 700, 1) + struct.pack(">IHHHHI", 0, 0, 0, 1024, 700, 0)
    assert InputFilter().feed(PREAMBLE + resize + FB_REQUEST) == PREAMBLE + FB_REQUEST
    assert InputFilter(drop_input=False).feed(PREAMBLE + resize + FB_REQUEST) == PREAMBLE + resize + FB_REQUEST
