"""The view-only filter on its own: framing, streaming, and (hypothesis) arbitrary message mixes and splits.

The gateway terminates the RFB handshake (tests/gateway/test_handshake.py), so the filter starts at a message
boundary. The property: in view scope the output is exactly the allowed messages, in order, however the stream is
split; in control scope it is the stream unchanged.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearth.gateway.viewonly import VIEW_ALLOWED, InputFilter, ViewOnlyViolation
from tests.gateway.rfbmsgs import messages, split

SET_ENCODINGS = struct.pack(">BxHii", 2, 2, 0, -223)
FB_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 800, 600)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 10)
CUT = struct.pack(">BxxxI", 6, 5) + b"hello"


def test_input_dropped_everything_else_kept() -> None:
    f = InputFilter()
    stream = SET_ENCODINGS + KEY + FB_REQUEST + POINTER + CUT + FB_REQUEST
    assert f.feed(stream) == SET_ENCODINGS + FB_REQUEST + FB_REQUEST


def test_split_across_messages_bytewise() -> None:
    f = InputFilter()
    stream = KEY + FB_REQUEST + POINTER + SET_ENCODINGS
    out = b"".join(f.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == FB_REQUEST + SET_ENCODINGS


def test_unknown_message_ends_view_scope_and_passes_in_control() -> None:
    with pytest.raises(ViewOnlyViolation, match="type 99"):
        InputFilter().feed(FB_REQUEST + bytes([99, 1, 2, 3]) + KEY)
    control = InputFilter(drop_input=False)
    assert control.feed(SET_ENCODINGS + bytes([99, 1, 2, 3]) + KEY) == SET_ENCODINGS + bytes([99, 1, 2, 3]) + KEY


def test_extended_clipboard_with_negative_length_keeps_framing() -> None:
    """noVNC announces extended clipboard caps with a negative ClientCutText length right after connecting."""
    caps = bytes.fromhex("06000000fffffff81f00000100000000")
    for drop in (True, False):
        f = InputFilter(drop_input=drop)
        out = f.feed(caps + FB_REQUEST)
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


@settings(max_examples=400, deadline=None)
@given(msgs=messages(), data=st.data())
def test_view_scope_forwards_exactly_the_allowed_messages_for_any_split(msgs: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(msgs)
    f = InputFilter(drop_input=True)
    out = b"".join(f.feed(chunk) for chunk in split(stream, data))
    assert out == b"".join(m for m in msgs if m[0] in VIEW_ALLOWED)


@settings(max_examples=200, deadline=None)
@given(msgs=messages(), data=st.data())
def test_control_scope_forwards_the_stream_unchanged_for_any_split(msgs: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(msgs)
    f = InputFilter(drop_input=False)
    assert b"".join(f.feed(chunk) for chunk in split(stream, data)) == stream


@settings(max_examples=400, deadline=None)
@given(garbage=st.binary(max_size=600), data=st.data())
def test_view_scope_output_of_arbitrary_bytes_is_only_allowed_messages(garbage: bytes, data: st.DataObject) -> None:
    """Whatever a hostile viewer sends, what the filter lets through parses (by an independent reading of the spec)
    into allowed messages — the VNC server can never be led to read an input event. Only the last may be cut off:
    the filter streams a message's bytes as they arrive (the server waits for the rest, which only the filter's own
    framing can complete)."""
    f = InputFilter(drop_input=True)
    out = b""
    try:
        for chunk in split(garbage, data):
            out += f.feed(chunk)
    except ViewOnlyViolation as exc:
        out += exc.kept
    pos = 0
    while pos < len(out):
        kind = out[pos]
        assert kind in VIEW_ALLOWED, f"message type {kind} forwarded in view scope"
        if kind == 0:
            pos += 20
        elif kind == 2:
            pos += 4 + 4 * struct.unpack(">H", out[pos + 2 : pos + 4])[0]
        elif kind in (3, 150):
            pos += 10
        else:  # 248 ClientFence
            pos += 9 + out[pos + 8]
    missing = pos - len(out)  # bytes of the last forwarded message the server still waits for
    assert missing == (f._left if f._keep else 0), "the filter and the server disagree on the next message start"
