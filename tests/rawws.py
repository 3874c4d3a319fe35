"""A deliberately dumb WebSocket client on a plain socket: it sends whatever frames it is given (malformed ones
too), never answers pings, and reports the frames the server sent — the close frame's code included."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from dataclasses import dataclass, field

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0, length: int | None = None
) -> bytes:
    """One frame; `length` lies about the payload size when given."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


@dataclass
class Received:
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    eof: bool = False  # the server closed the TCP connection

    @property
    def close_code(self) -> int | None:
        for op, payload in self.frames:
            if op == OP_CLOSE:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    @property
    def close_reason(self) -> str:
        for op, payload in self.frames:
            if op == OP_CLOSE:
                return payload[2:].decode("utf-8", "replace")
        return ""

    def count(self, opcode: int) -> int:
        return sum(1 for op, _ in self.frames if op == opcode)


def connect(host: str, port: int, path: str, timeout: float = 10.0) -> tuple[socket.socket, bytes]:
    """Open the WebSocket (subprotocol binary); returns the socket and bytes already read past the handshake."""
    s = socket.create_connection((host, port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n".encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"no upgrade: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        s.close()
        raise ConnectionError(f"no upgrade: {status!r}")
    return s, rest


def read_until_closed(s: socket.socket, already: bytes = b"", timeout: float = 15.0) -> Received:
    """Read frames until the server closes the connection (or `timeout`); never answers anything."""
    data = bytearray(already)
    got = Received()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except OSError:
            got.eof = True
            break
        if not chunk:
            got.eof = True
            break
        data += chunk
    i = 0
    while i + 2 <= len(data):
        op, n, j = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, j = struct.unpack(">H", data[j : j + 2])[0], j + 2
        elif n == 127:
            n, j = struct.unpack(">Q", data[j : j + 8])[0], j + 8
        if j + n > len(data):
            break
        got.frames.append((op, bytes(data[j : j + n])))
        i = j + n
    return got


def exchange(host: str, port: int, path: str, frames: list[bytes], timeout: float = 15.0) -> Received:
    """Connect, send `frames` (stopping quietly if the server already hung up), read until closed."""
    s, rest = connect(host, port, path)
    try:
        for f in frames:
            try:
                s.sendall(f)
            except OSError:
                break
        return read_until_closed(s, rest, timeout)
    finally:
        s.close()
