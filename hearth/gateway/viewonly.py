"""Frame the client→server RFB message stream; in view scope forward only the messages that cannot be input.

The gateway terminates the RFB handshake on both sides (hearth/gateway/handshake.py), so this filter always starts
at a message boundary, whatever protocol version the viewer chose. View scope holds by construction: what reaches
the VNC server is a concatenation of whole messages of the types in VIEW_ALLOWED, each framed by its length as the
RFB specification gives it. Input (KeyEvent 4, PointerEvent 5, ClientCutText 6, SetDesktopSize 251, QEMU client
messages 255) is dropped; any other type cannot be framed safely and ends the connection (ViewOnlyViolation →
close 4403). Dropped bytes never reach the server, so a mis-framed dropped message cannot desynchronise it.
"""

from __future__ import annotations

import struct

SET_PIXEL_FORMAT, SET_ENCODINGS, FB_UPDATE_REQUEST = 0, 2, 3
KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT = 4, 5, 6
ENABLE_CONTINUOUS_UPDATES, CLIENT_FENCE, SET_DESKTOP_SIZE = 150, 248, 251
QEMU_CLIENT = 255  # QEMU extended key event (input)
VIEW_ALLOWED = frozenset({SET_PIXEL_FORMAT, SET_ENCODINGS, FB_UPDATE_REQUEST, ENABLE_CONTINUOUS_UPDATES, CLIENT_FENCE})
VIEW_DROPPED = frozenset({KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, SET_DESKTOP_SIZE, QEMU_CLIENT})
_FIXED = {
    SET_PIXEL_FORMAT: 20,
    FB_UPDATE_REQUEST: 10,
    KEY_EVENT: 8,
    POINTER_EVENT: 6,
    ENABLE_CONTINUOUS_UPDATES: 10,
    QEMU_CLIENT: 12,
}
HEADER_MAX = 9  # bytes that determine any framed message's length (ClientFence needs the most)


class ViewOnlyViolation(Exception):
    """A view-scope viewer sent a message type the gateway cannot frame; the connection is closed (4403).
    `kept`: what the same chunk forwarded before the offending message (the end of an allowed message)."""

    def __init__(self, reason: str, kept: bytes) -> None:
        super().__init__(reason)
        self.kept = kept


class InputFilter:
    """Frames the client→server stream. With `drop_input` (view scope) only VIEW_ALLOWED messages are forwarded;
    either way it notes when the viewer first asked for a framebuffer update (for the create→first-frame metric).

    Streaming: a message is forwarded (or dropped) as its bytes arrive; only an incomplete header (at most 8 bytes)
    is ever held back. So a ClientCutText announcing gigabytes costs the gateway no memory. In control scope the
    filter steps aside (returns its input unchanged) once the first framebuffer update request has been seen.
    """

    def __init__(self, drop_input: bool = True) -> None:
        self.drop_input = drop_input
        self.saw_update_request = False
        self._buf = b""  # an incomplete message header (< HEADER_MAX bytes)
        self._left = 0  # bytes of the current message still to pass or drop
        self._keep = True  # whether the current message is forwarded
        self._through = False  # control scope, framing no longer needed: pass everything

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward; in view scope input messages are removed. Raises ViewOnlyViolation (view scope) on a
        message type that cannot be framed; nothing of that message or after it is forwarded."""
        if self._through:
            return data
        buf = self._buf + data if self._buf else data
        self._buf = b""
        out = bytearray()
        pos, end = 0, len(buf)
        while pos < end:
            if self._left:
                n = min(self._left, end - pos)
                if self._keep:
                    out += buf[pos : pos + n]
                pos += n
                self._left -= n
                continue
            kind = buf[pos]
            if self.drop_input and kind not in VIEW_ALLOWED and kind not in VIEW_DROPPED:
                raise ViewOnlyViolation(
                    f"view-only viewer sent RFB message type {kind}, which is not allowed", bytes(out)
                )
            size = self._size(buf[pos : pos + HEADER_MAX])
            if size == -1:  # control scope, an unframeable message: stop framing, pass everything through
                self._through = True
                out += buf[pos:]
                break
            if size is None:  # header incomplete: keep it for the next chunk
                self._buf = bytes(buf[pos:])
                break
            if kind == FB_UPDATE_REQUEST:
                self.saw_update_request = True
            self._keep = not self.drop_input or kind in VIEW_ALLOWED
            self._left = size
        if not self.drop_input and self.saw_update_request and not self._buf:
            self._through = True  # control scope: the first-frame metric has what it needs
        return bytes(out)

    @staticmethod
    def _size(buf: bytes) -> int | None:
        """The whole message's length from its first bytes; None when more are needed, -1 when unknown."""
        kind = buf[0]
        if kind in _FIXED:
            return _FIXED[kind]
        if kind == SET_ENCODINGS:
            return None if len(buf) < 4 else 4 + 4 * struct.unpack(">H", buf[2:4])[0]
        if kind == CLIENT_CUT_TEXT:  # signed length: negative = extended clipboard (noVNC sends its caps at once)
            return None if len(buf) < 8 else 8 + abs(struct.unpack(">i", buf[4:8])[0])
        if kind == SET_DESKTOP_SIZE:
            return None if len(buf) < 8 else 8 + 16 * buf[6]
        if kind == CLIENT_FENCE:
            return None if len(buf) < 9 else 9 + buf[8]
        return -1  # unknown: cannot be framed
