"""View-only scope: parse the client→server RFB stream and drop input (key, pointer, clipboard) messages.

The filter follows the RFB 3.8 client side: version (12 bytes), security choice (1 byte), ClientInit (1 byte), then
typed messages whose lengths are known, so input events can be removed without breaking framing.
"""

from __future__ import annotations

import struct

KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT = 4, 5, 6
QEMU_CLIENT = 255  # QEMU extended key event (input)
_FIXED = {0: 20, 3: 10, KEY_EVENT: 8, POINTER_EVENT: 6, 150: 10, QEMU_CLIENT: 12}
_INPUT = {KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, QEMU_CLIENT}


class InputFilter:
    """Frames the client→server stream. With `drop_input` (view scope) input messages are removed; either way it
    notes when the viewer first asked for a framebuffer update (for the create→first-frame metric)."""

    def __init__(self, drop_input: bool = True) -> None:
        self.drop_input = drop_input
        self.saw_update_request = False
        self._buf = b""
        self._preamble = 12 + 1 + 1  # version, security type, ClientInit (security None: no auth exchange)

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward; input messages are removed, incomplete messages are held back."""
        if self._preamble < 0:  # framing abandoned (control scope only)
            return data
        self._buf += data
        out = bytearray()
        if self._preamble:
            take = min(self._preamble, len(self._buf))
            out += self._buf[:take]
            self._buf = self._buf[take:]
            self._preamble -= take
        while self._buf:
            size = self._size(self._buf)
            if size == -1:  # an unframeable message
                if self.drop_input:  # view-only: drop everything from here on
                    self._buf = b""
                    break
                out += self._buf  # control: stop framing, pass everything through
                self._buf = b""
                self._preamble = -1
                break
            if size is None or len(self._buf) < size:
                break
            msg, self._buf = self._buf[:size], self._buf[size:]
            if msg[0] == 3:
                self.saw_update_request = True
            if not (self.drop_input and msg[0] in _INPUT):
                out += msg
        return bytes(out)

    @staticmethod
    def _size(buf: bytes) -> int | None:
        kind = buf[0]
        if kind in _FIXED:
            return _FIXED[kind]
        if kind == 2:  # SetEncodings
            return None if len(buf) < 4 else 4 + 4 * struct.unpack(">H", buf[2:4])[0]
        if kind == CLIENT_CUT_TEXT:  # signed length: negative = extended clipboard (noVNC sends its caps at once)
            return None if len(buf) < 8 else 8 + abs(struct.unpack(">i", buf[4:8])[0])
        if kind == 251:  # SetDesktopSize
            return None if len(buf) < 8 else 8 + 16 * buf[6]
        if kind == 248:  # ClientFence
            return None if len(buf) < 9 else 9 + buf[8]
        return -1  # unknown: cannot be framed
