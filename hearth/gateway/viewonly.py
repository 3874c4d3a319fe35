"""View-only scope: parse the client→server RFB stream and drop input (key, pointer, clipboard, desktop size)
messages.

The filter follows the RFB 3.8 client side: version (12 bytes), security choice (1 byte), ClientInit (1 byte), then
typed messages whose lengths are known, so input events can be removed without breaking framing.
"""

from __future__ import annotations

import struct

KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT = 4, 5, 6
QEMU_CLIENT = 255  # QEMU extended key event (input)
_FIXED = {0: 20, 3: 10, KEY_EVENT: 8, POINTER_EVENT: 6, 150: 10, QEMU_CLIENT: 12}
SET_DESKTOP_SIZE = 251
_INPUT = {KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, QEMU_CLIENT, SET_DESKTOP_SIZE}  # a watcher changes nothing
HEADER_MAX = 9  # bytes that determine any framed message's length (ClientFence needs the most)


class InputFilter:
    """Frames the client→server stream. With `drop_input` (view scope) input messages are removed; either way it
    notes when the viewer first asked for a framebuffer update (for the create→first-frame metric).

    Streaming: a message is forwarded (or dropped) as its bytes arrive; only an incomplete header (at most 8 bytes)
    is ever held back. So a ClientCutText announcing gigabytes costs the gateway no memory, and the VNC server sees
    (and refuses) it at once instead of the gateway buffering it.
    """

    def __init__(self, drop_input: bool = True) -> None:
        self.drop_input = drop_input
        self.saw_update_request = False
        self._buf = b""  # an incomplete message header (< HEADER_MAX bytes)
        self._left = 0  # bytes of the current message still to pass or drop
        self._keep = True  # whether the current message is forwarded
        self._dead = False  # view-only framing lost: everything from here on is dropped
        self._preamble = 12 + 1 + 1  # version, security type, ClientInit (security None: no auth exchange)

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward; input messages are removed, an incomplete header is held back."""
        if self._preamble < 0:  # framing abandoned (control scope only)
            return data
        if self._dead:
            return b""
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out = bytearray()
        pos = 0
        if self._preamble:
            pos = min(self._preamble, len(buf))
            out += buf[:pos]
            self._preamble -= pos
        while pos < len(buf):
            if self._left:
                n = min(self._left, len(buf) - pos)
                if self._keep:
                    out += buf[pos : pos + n]
                pos += n
                self._left -= n
                continue
            size = self._size(buf[pos : pos + HEADER_MAX])
            if size == -1:  # an unframeable message
                if self.drop_input:  # view-only: drop everything from here on
                    self._dead = True
                    break
                out += buf[pos:]  # control: stop framing, pass everything through
                self._preamble = -1
                break
            if size is None:  # header incomplete: keep it for the next chunk
                self._buf = bytes(buf[pos:])
                break
            kind = buf[pos]
            if kind == 3:
                self.saw_update_request = True
            self._keep = not (self.drop_input and kind in _INPUT)
            self._left = size
        return bytes(out)

    @staticmethod
    def _size(buf: bytes) -> int | None:
        """The whole message's length from its first bytes; None when more are needed, -1 when unknown."""
        kind = buf[0]
        if kind in _FIXED:
            return _FIXED[kind]
        if kind == 2:  # SetEncodings
            return None if len(buf) < 4 else 4 + 4 * struct.unpack(">H", buf[2:4])[0]
        if kind == CLIENT_CUT_TEXT:  # signed length: negative = extended clipboard (noVNC sends its caps at once)
            return None if len(buf) < 8 else 8 + abs(struct.unpack(">i", buf[4:8])[0])
        if kind == SET_DESKTOP_SIZE:
            return None if len(buf) < 8 else 8 + 16 * buf[6]
        if kind == 248:  # ClientFence
            return None if len(buf) < 9 else 9 + buf[8]
        return -1  # unknown: cannot be framed
