"""The gateway's RFB filter on its own: framing, streaming, the specification's preconditions in both scopes, and
(hypothesis) arbitrary message mixes and splits judged by an independent strict-server model (tests/gateway/rfbmsgs.py).

The gateway terminates the RFB handshake (tests/gateway/test_handshake.py), so the filter starts at a message
boundary. The properties: whatever the viewer sends and however it is split, what the filter forwards is exactly the
messages a strict server accepts, up to the first it would not (which closes the connection), minus input in view
scope; and any bytes at all come out as whole messages that meet their preconditions.
"""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearth.gateway.rfbspec import X11VNC
from hearth.gateway.viewonly import VIEW_ALLOWED, Forbidden, InputFilter
from tests.gateway.rfbmsgs import (
    EXT_CLIPBOARD,
    NOVNC_START,
    Strict,
    desktop_size,
    expected,
    fb_request,
    messages,
    plausible,
    set_encodings,
    split,
    strict_lengths,
)
from tests.xvnc import local_xvnc

SET_ENCODINGS = set_encodings(0, -223)
FB_REQUEST = fb_request(1, 800, 600)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 10)
CUT = struct.pack(">BxxxI", 6, 5) + b"hello"
RESIZE = desktop_size(640, 480, [(0, 0, 0, 640, 480, 0)])
QEMU_KEY = struct.pack(">BBHII", 255, 0, 1, 0x61, 0x1E)
FENCE = struct.pack(">BxxxIB", 248, 0x80000000, 1) + b"\x00"
CONTINUOUS = struct.pack(">BBHHHH", 150, 1, 0, 0, 640, 480)


def test_input_dropped_everything_else_kept() -> None:
    f = InputFilter()
    stream = SET_ENCODINGS + KEY + FB_REQUEST + POINTER + CUT + FB_REQUEST
    assert f.feed(stream) == SET_ENCODINGS + FB_REQUEST + FB_REQUEST


def test_split_across_messages_bytewise() -> None:
    f = InputFilter()
    stream = KEY + FB_REQUEST + POINTER + SET_ENCODINGS
    out = b"".join(f.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == FB_REQUEST + SET_ENCODINGS


@pytest.mark.parametrize("drop", [True, False])
def test_unknown_message_closes_in_every_scope(drop: bool) -> None:
    with pytest.raises(Forbidden, match="type 99") as caught:
        InputFilter(drop_input=drop).feed(FB_REQUEST + bytes([99, 1, 2, 3]) + KEY)
    assert caught.value.kept == FB_REQUEST


@pytest.mark.parametrize(
    ("message", "needs"),
    [
        (RESIZE, "EXTENDED_DESKTOP_SIZE"),  # the message that segfaulted Xvnc 1.12
        (QEMU_KEY, "QEMU_EXTENDED_KEY"),
        (FENCE, "FENCE"),
        (CONTINUOUS, "CONTINUOUS_UPDATES"),
        (struct.pack(">BxxxI", 6, 0xFFFFFFF8) + bytes(8), "EXTENDED_CLIPBOARD"),
    ],
)
@pytest.mark.parametrize("drop", [True, False])
def test_messages_before_their_encoding_is_announced_close(message: bytes, needs: str, drop: bool) -> None:
    """Control and view scope alike: nothing of the message reaches the server, the reason names what is missing."""
    f = InputFilter(drop_input=drop)
    with pytest.raises(Forbidden, match=needs) as caught:
        f.feed(SET_ENCODINGS + FB_REQUEST + message)
    assert caught.value.kept == SET_ENCODINGS + FB_REQUEST


def test_announced_then_withdrawn_is_refused_again() -> None:
    """SetEncodings replaces the list: a later one without ExtendedDesktopSize takes the permission away."""
    f = InputFilter(drop_input=False)
    start = set_encodings(0, -308) + fb_request(0)
    assert f.feed(start + RESIZE) == start + RESIZE and f.resized
    with pytest.raises(Forbidden, match="EXTENDED_DESKTOP_SIZE"):
        f.feed(set_encodings(0) + fb_request(0) + RESIZE)


def test_resize_needs_the_servers_layout_first() -> None:
    """Announced but no non-incremental update request yet: the server has not sent its ExtendedDesktopSize."""
    f = InputFilter(drop_input=False)
    with pytest.raises(Forbidden, match="screen layout"):
        f.feed(set_encodings(0, -308) + fb_request(1) + RESIZE)


def test_everything_announced_everything_passes_in_control_scope() -> None:
    f = InputFilter(drop_input=False)
    stream = NOVNC_START + RESIZE + QEMU_KEY + FENCE + CONTINUOUS + KEY + POINTER + CUT
    assert f.feed(stream) == stream
    assert f.resized


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (desktop_size(640, 480, []), "0 screens"),
        (desktop_size(0, 0, [(0, 0, 0, 0, 0, 0)]), "0x0"),
        (desktop_size(16384, 16384, [(0, 0, 0, 16384, 16384, 0)]), "16384x16384"),
        (desktop_size(640, 480, [(0, 0, 0, 800, 480, 0)]), "screen 0"),
        (desktop_size(640, 480, [(1, 0, 0, 320, 480, 0), (1, 320, 0, 320, 480, 0)]), "screen 1"),
        (desktop_size(640, 480, [(0, 0, 0, 640, 480, 0)] * 17), "17 screens"),
        (struct.pack(">BxxxIB", 248, 0, 65) + bytes(65), "65-byte payload"),
        (struct.pack(">BxxxI", 6, 0xFFFFFFFE) + bytes(2), "at least 4"),
        (struct.pack(">BBH", 255, 1, 0), "QEMU submessage 1"),  # audio: Xvnc does not take it
        (struct.pack(">BxBB", 250, 1, 2), "xvp"),
        (b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBBxxx", 24, 24, 0, 1, 255, 255, 255, 16, 8, 0), "24 bits"),
        (set_encodings(*range(513)), "513 encodings"),
    ],
)
def test_fields_that_crash_or_confuse_servers_are_refused(message: bytes, why: str) -> None:
    for drop in (True, False):
        with pytest.raises(Forbidden, match=why):
            InputFilter(drop_input=drop).feed(NOVNC_START + message)


def test_resize_is_forwarded_whole_however_it_arrives() -> None:
    """TigerVNC 1.12 loses its framing when a SetDesktopSize header arrives split: the filter holds it until whole."""
    f = InputFilter(drop_input=False)
    assert f.feed(NOVNC_START) == NOVNC_START
    pieces = [f.feed(RESIZE[i : i + 1]) for i in range(len(RESIZE))]
    assert pieces[:-1] == [b""] * (len(RESIZE) - 1) and pieces[-1] == RESIZE


@pytest.mark.parametrize(
    ("asked", "forwarded"),
    [
        (desktop_size(390, 844, [(5, 0, 0, 390, 844, 1)]), desktop_size(500, 1082, [(5, 0, 0, 500, 1082, 1)])),
        (desktop_size(1, 8192, [(0, 0, 0, 1, 8192, 0)]), desktop_size(500, 8192, [(0, 0, 0, 500, 8192, 0)])),
        (
            desktop_size(800, 20, [(0, 0, 0, 400, 20, 0), (1, 400, 0, 400, 20, 0)]),
            desktop_size(1840, 46, [(0, 0, 0, 920, 46, 0), (1, 920, 0, 920, 46, 0)]),
        ),
        (RESIZE, RESIZE),
    ],
)
def test_a_desktop_smaller_than_chromiums_window_is_scaled_up(asked: bytes, forwarded: bytes) -> None:
    """Chromium's window is at least 500×46 (its WM hints): on a phone's 390-pixel-wide desktop the kiosk window
    stuck out and the page was cut off. The request is enlarged, keeping its aspect ratio where it can."""
    f = InputFilter(drop_input=False)
    assert f.feed(NOVNC_START + asked) == NOVNC_START + forwarded


def test_a_resize_the_size_owner_refuses_is_answered_prohibited() -> None:
    """The server must answer every SetDesktopSize (noVNC asks for no other size until it hears back): a refused one
    reaches it as a request for 65535×65535, which Xvnc answers "prohibited" to that viewer alone."""
    allowed = [False]
    f = InputFilter(drop_input=False, may_resize=lambda: allowed[0])
    asked = desktop_size(390, 844, [(7, 0, 0, 390, 844, 3)])
    assert (
        f.feed(NOVNC_START + asked + KEY)
        == NOVNC_START + desktop_size(65535, 65535, [(7, 0, 0, 65535, 65535, 3)]) + KEY
    )
    assert not f.resized
    allowed[0] = True
    assert f.feed(RESIZE) == RESIZE and f.resized


def test_view_scope_never_asks_to_resize() -> None:
    asked: list[bool] = []

    def may_resize() -> bool:
        asked.append(True)
        return True

    f = InputFilter(drop_input=True, may_resize=may_resize)
    assert f.feed(NOVNC_START + RESIZE) == NOVNC_START
    assert not asked and not f.resized


def test_x11vnc_profile_refuses_what_it_does_not_take() -> None:
    f = InputFilter(drop_input=False, server=X11VNC)
    with pytest.raises(Forbidden, match="x11vnc"):
        f.feed(NOVNC_START + FENCE)


def test_extended_clipboard_with_negative_length_keeps_framing() -> None:
    """noVNC sends its extended clipboard caps (negative ClientCutText length) once the server sent its own."""
    caps = bytes.fromhex("06000000fffffff81f00000100000000")
    for drop in (True, False):
        f = InputFilter(drop_input=drop)
        out = f.feed(set_encodings(0, EXT_CLIPBOARD) + caps + FB_REQUEST)
        assert out.endswith(FB_REQUEST)
        assert f.saw_update_request


def test_huge_cut_text_is_streamed_not_buffered() -> None:
    """A ClientCutText announcing 2 GiB: control scope forwards its bytes as they come (the VNC server sees the
    length at once and can refuse it); view scope drops them; neither holds more than a header back."""
    header = struct.pack(">BxxxI", 6, 0x7FFFFFFF)
    junk = bytes(range(256)) * 256  # 64 KiB
    control, view = InputFilter(drop_input=False), InputFilter(drop_input=True)
    assert control.feed(header) == header
    assert view.feed(header) == b""
    for _ in range(16):  # 1 MiB of "clipboard"
        assert control.feed(junk) == junk
        assert view.feed(junk) == b""
    for f in (control, view):
        assert len(f._buf) < 9


def run_filter(f: InputFilter, chunks: list[bytes]) -> tuple[bytes, bool]:
    out = b""
    try:
        for chunk in chunks:
            out += f.feed(chunk)
    except Forbidden as exc:
        return out + exc.kept, True
    return out, False


@settings(max_examples=600, deadline=None)
@given(msgs=messages(), view=st.booleans(), data=st.data())
def test_forwarded_is_what_a_strict_server_accepts_for_any_split(
    msgs: list[bytes], view: bool, data: st.DataObject
) -> None:
    """Control and view scope: the forwarded bytes are the messages a strict server accepts, in order, up to the
    first it would not — then the filter refuses (4403) and forwards nothing more; view scope drops input."""
    out, refused = run_filter(InputFilter(drop_input=view), split(b"".join(msgs), data))
    assert (out, refused) == expected(msgs, view)


@settings(max_examples=400, deadline=None)
@given(garbage=st.binary(max_size=600), start=st.booleans(), view=st.booleans(), data=st.data())
def test_any_bytes_come_out_as_messages_that_meet_their_preconditions(
    garbage: bytes, start: bool, view: bool, data: st.DataObject
) -> None:
    """Whatever a hostile viewer sends, what the filter lets through parses (by the specification) into messages a
    strict server accepts, input only in control scope. Only the last may be cut off: the filter streams a
    ClientCutText's bytes as they arrive (the server waits for the rest, which only the filter's framing completes)."""
    f = InputFilter(drop_input=view)
    out, _ = run_filter(f, split((NOVNC_START if start else b"") + garbage, data))
    server, pos = Strict(), 0
    while pos < len(out):
        size = strict_lengths(out, pos)
        msg = out[pos : pos + size]
        if len(msg) == size:
            assert server.ok(msg), f"message {msg[:12].hex()} forwarded against its preconditions"
        else:
            assert out[pos] == 6, "only a streamed ClientCutText may be forwarded in part"
        assert not view or out[pos] in VIEW_ALLOWED, f"message type {out[pos]} forwarded in view scope"
        pos += size
    missing = pos - len(out)  # bytes of the last forwarded message the server still waits for
    assert missing == (f._left if f._keep else 0), "the filter and the server disagree on the next message start"


@pytest.fixture(scope="module")
def xvnc() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    with local_xvnc(640, 480) as (port, proc):
        yield port, proc


def rfb_session(port: int, payload: bytes) -> tuple[int, int]:
    """Handshake with the Xvnc on `port`, send `payload`, close; returns the size its ServerInit gave."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rwb")
        f.read(12)
        f.write(b"RFB 003.008\n")
        f.flush()
        f.read(f.read(1)[0])
        f.write(b"\x01")
        f.flush()
        assert f.read(4) == bytes(4)
        f.write(b"\x01")  # shared
        f.flush()
        head = f.read(24)
        f.read(struct.unpack(">I", head[20:24])[0])
        s.sendall(payload)
        width, height = struct.unpack(">HH", head[:4])
        return width, height


@settings(max_examples=150, deadline=None)
@given(msgs=st.one_of(plausible(), messages()), view=st.booleans(), data=st.data())
def test_whatever_the_filter_forwards_leaves_a_real_xvnc_alive(
    xvnc: tuple[int, subprocess.Popen[bytes]], msgs: list[bytes], view: bool, data: st.DataObject
) -> None:
    """Hypothesis' message mixes (well-formed ones, whose fate depends on what was announced, and anything) through
    the filter, and what it forwards sent to a real Xvnc (TigerVNC 1.12, the sandbox's VNC server) on loopback: Xvnc
    is still running and answers the next client. Without the filter this finds the segfault within a few cases."""
    port, proc = xvnc
    out, _ = run_filter(InputFilter(drop_input=view), split(b"".join(msgs), data))
    try:
        rfb_session(port, out)
        assert min(rfb_session(port, b"")) >= 1
    except OSError as exc:
        raise AssertionError(f"Xvnc stopped answering ({exc}); its exit status: {proc.poll()}") from exc
    assert proc.poll() is None, "Xvnc died"
