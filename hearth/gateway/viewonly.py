"""Frame the client→server RFB message stream and forward only messages the VNC server can safely take.

The gateway terminates the RFB handshake on both sides (hearth/gateway/handshake.py), so this filter always starts
at a message boundary, whatever protocol version the viewer chose. In every scope each message is checked against
the specification's preconditions (hearth/gateway/rfbspec.py): the pseudo-encodings it depends on were announced
in the viewer's latest SetEncodings (SetDesktopSize also needs the server's ExtendedDesktopSize rectangle, sent on
a non-incremental FramebufferUpdateRequest), its fields are sane, and the sandbox's VNC server handles it. Anything
else — an unknown type, a message the server does not handle, a precondition not met — ends the connection
(Forbidden → close 4403); nothing of that message or after it is forwarded.

View scope then drops input (KeyEvent, PointerEvent, ClientCutText, SetDesktopSize, QEMU): what reaches the server is
whole messages of the remaining types. Control scope forwards everything that passed, except that a SetDesktopSize
the desktop's size owner refuses (`may_resize`: hearth/gateway/desktop_size.py) becomes one the server answers
"prohibited" (rfbspec.prohibited: the viewer hears back, as the specification has it), and one smaller than
Chromium's smallest window is scaled up to it (rfbspec.at_least: the kiosk window always fits the screen).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hearth.gateway.rfbspec import (
    FENCE_PAYLOAD_MAX,
    FIXED,
    INPUT,
    MAX_ENCODINGS,
    NEEDS,
    QEMU_KEY_SIZE,
    QEMU_NEEDS,
    XVNC,
    Msg,
    Pseudo,
    Qemu,
    Refused,
    ServerProfile,
    at_least,
    check_desktop_size,
    check_pixel_format,
    desktop_size_length,
    encodings_of,
    missing,
    name_of,
    prohibited,
)

VIEW_ALLOWED = frozenset(Msg) - INPUT  # what a view-scope viewer's forwarded stream can consist of
DECIDE_MAX = 4 + 4 * MAX_ENCODINGS  # the most bytes held back before a message is judged (a whole SetEncodings)


class Forbidden(Exception):
    """A viewer sent a message the gateway does not forward; the connection is closed (4403) with this reason.
    `kept`: what the same chunk forwarded before the offending message."""

    def __init__(self, reason: str, kept: bytes) -> None:
        super().__init__(reason)
        self.kept = kept


class InputFilter:
    """Frames the client→server stream and keeps the protocol's preconditions; with `drop_input` (view scope) only
    VIEW_ALLOWED messages are forwarded. Notes when the viewer first asked for a framebuffer update (for the
    create→first-frame metric) and whether a SetDesktopSize was forwarded (`resized`).

    Streaming: a message is judged once its deciding bytes are in (a whole message, at most DECIDE_MAX bytes, or
    ClientCutText's 8-byte header) and then forwarded or dropped as its bytes arrive; a ClientCutText announcing
    gigabytes costs the gateway no memory. A SetDesktopSize is forwarded whole, in one piece, and `resizes` says
    where: the relay writes it alone once everything before it has left (TigerVNC 1.12 loses its framing on a
    SetDesktopSize whose header arrives split across TCP segments, and then reads the rest as other messages).
    """

    def __init__(
        self,
        drop_input: bool = True,
        server: ServerProfile = XVNC,
        may_resize: Callable[[], bool] | None = None,
    ) -> None:
        self.drop_input = drop_input
        self.server = server
        self.may_resize = may_resize
        self.saw_update_request = False
        self.update_requests = 0  # FramebufferUpdateRequests forwarded (a viewer asks for the next once it has one)
        self.resized = False
        self.announced: frozenset[int] = frozenset()
        self._layout_sent = False  # the server has sent an ExtendedDesktopSize rectangle since -308 was announced
        self._buf = b""  # the start of a message not judged yet (< its deciding length)
        self._left = 0  # bytes of the current message still to pass or drop
        self._keep = True  # whether the current message is forwarded
        self._instead: bytes | None = None  # what is forwarded in place of the message just judged
        self.resizes: list[int] = []  # where forwarded SetDesktopSize messages start in feed's last output

    @property
    def at_boundary(self) -> bool:
        """Whether everything forwarded so far is whole messages."""
        return not self._buf and not (self._left and self._keep)

    def feed(self, data: bytes) -> bytes:
        """The bytes to forward. Raises Forbidden on a message that may not reach the server."""
        buf = memoryview(self._buf + data if self._buf else data)  # (slices of a view copy nothing)
        self._buf = b""
        self.resizes = []
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
            head = buf[pos : pos + DECIDE_MAX]
            try:
                need = self._need(head)
                if len(head) < need:  # not all of it yet: keep it for the next chunk
                    self._buf = bytes(head)
                    break
                self._left, self._keep = self._judge(bytes(head[:need]))
            except Refused as exc:
                raise Forbidden(str(exc), bytes(out)) from None
            if self._keep and head[0] == Msg.SET_DESKTOP_SIZE:
                self.resizes.append(len(out))
            if self._instead is not None:  # (a whole message, judged from all of its bytes)
                out += self._instead
                pos, self._left, self._instead = pos + self._left, 0, None
        return bytes(out)

    def _need(self, head: memoryview) -> int:
        """How many bytes decide the message `head` starts: its whole length, or a header's when that is all
        there is yet (ClientCutText: always its header)."""
        kind = head[0]
        if kind not in self.server.messages:
            raise Refused(f"viewer sent RFB message {name_of(kind)}, which {self.server.name} here does not take")
        if kind in FIXED:
            return FIXED[kind]
        if kind == Msg.SET_ENCODINGS:
            if len(head) < 4:
                return 4
            n: int = struct.unpack(">H", head[2:4])[0]
            if n > MAX_ENCODINGS:
                raise Refused(f"SetEncodings with {n} encodings (at most {MAX_ENCODINGS})")
            return 4 + 4 * n
        if kind == Msg.CLIENT_CUT_TEXT:
            return 8
        if kind == Msg.CLIENT_FENCE:
            if len(head) < 9:
                return 9
            if head[8] > FENCE_PAYLOAD_MAX:
                raise Refused(f"ClientFence with a {head[8]}-byte payload (at most {FENCE_PAYLOAD_MAX})")
            return 9 + head[8]
        if kind == Msg.SET_DESKTOP_SIZE:
            return 8 if len(head) < 8 else desktop_size_length(bytes(head[:8]))
        # Msg.QEMU
        if len(head) < 2:
            return 2
        if head[1] not in self.server.qemu:
            raise Refused(f"viewer sent QEMU submessage {head[1]}, which {self.server.name} here does not take")
        return QEMU_KEY_SIZE

    def _judge(self, msg: bytes) -> tuple[int, bool]:
        """Check a message's preconditions (raises Refused); returns its whole length and whether it is forwarded."""
        kind = msg[0]
        needed = missing(NEEDS.get(kind, ()), self.announced)
        if kind == Msg.QEMU:
            needed = missing((QEMU_NEEDS[Qemu(msg[1])],), self.announced)
        if needed:
            raise Refused(f"{name_of(kind)} before the viewer announced {needed} in SetEncodings")
        keep = not (self.drop_input and kind in INPUT)
        size = len(msg)
        if kind == Msg.SET_PIXEL_FORMAT:
            check_pixel_format(msg)
        elif kind == Msg.SET_ENCODINGS:
            self.announced = encodings_of(msg)
            if Pseudo.EXTENDED_DESKTOP_SIZE not in self.announced:
                self._layout_sent = False
        elif kind == Msg.FB_UPDATE_REQUEST:
            self.saw_update_request = True
            self.update_requests += 1
            if msg[1] == 0 and Pseudo.EXTENDED_DESKTOP_SIZE in self.announced:
                self._layout_sent = True  # the server answers with its screen layout
        elif kind == Msg.CLIENT_CUT_TEXT:
            length = struct.unpack(">i", msg[4:8])[0]
            if length < 0:  # extended clipboard: -length bytes follow, at least the 4-byte flags
                if Pseudo.EXTENDED_CLIPBOARD not in self.announced:
                    raise Refused("an extended ClientCutText before the viewer announced EXTENDED_CLIPBOARD")
                if length > -4:
                    raise Refused(f"an extended ClientCutText of {-length} bytes (at least 4)")
            size = 8 + abs(length)
        elif kind == Msg.SET_DESKTOP_SIZE:
            if not self._layout_sent:
                raise Refused(
                    "SetDesktopSize before the server sent its screen layout (a non-incremental "
                    "FramebufferUpdateRequest after announcing EXTENDED_DESKTOP_SIZE)"
                )
            check_desktop_size(msg)
            if keep and self.may_resize is not None and not self.may_resize():
                self._instead = prohibited(msg)  # another viewer owns the desktop's size: the server says no
            elif keep:
                self.resized = True
                if (bigger := at_least(msg)) != msg:
                    self._instead = bigger
        return size, keep
