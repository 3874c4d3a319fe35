"""One HTTP POST on a plain socket: what the agent's pushes to the controller need (hearth_agent/controller.py), and no
more. urllib.request (with http.client, email, ssl, tempfile, …) is ≈2.7 MiB of every agent's memory (issue 25).

HTTP/1.1, one request per connection (`Connection: close`), a body with Content-Length; the answer's status is what counts. No proxy, no redirect followed
(a 3xx is an answer like any other: the bearer secret never goes to another location), every socket operation bounded
by `timeout`. https only when the URL says so (ssl is imported then, not before).
"""

from __future__ import annotations

import contextlib
import socket

MAX_HEAD = 16384  # the status line and headers of an answer
MAX_BODY = 1 << 20  # of its body, read and dropped

__all__ = ["BadAnswer", "post"]


class BadAnswer(OSError):
    """The other end answered something that is not HTTP (retried like a connection error)."""


def post(scheme: str, host: str, port: int, target: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
    """POST `body` to `target` on host:port; returns the answer's status code. OSError (ConnectionRefusedError,
    TimeoutError, BadAnswer, ssl.SSLError, …) when there is no answer; ValueError for a header that would split."""
    if any(c in f"{target}{k}{v}" for k, v in headers.items() for c in "\r\n") or any(c in target for c in " \r\n"):
        raise ValueError("a line break (or a space in the target) would split the request")
    # bytes: a str host name would go through the idna codec (encodings.idna, stringprep: ≈0.3 MiB) in getaddrinfo
    name = host.encode() if host.isascii() else host.encode("idna")
    sock = socket.create_connection((name, port), timeout)  # type: ignore[arg-type]  # getaddrinfo takes bytes
    try:
        if scheme == "https":
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        authority = f"[{host}]" if ":" in host else host
        default = 443 if scheme == "https" else 80
        head = [f"POST {target} HTTP/1.1", f"Host: {authority}" + ("" if port == default else f":{port}")]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        sock.sendall("\r\n".join(head).encode("latin-1") + body)
        return _status(sock)
    finally:
        sock.close()


def _status(sock: socket.socket) -> int:
    """The status code of the answer's status line (`HTTP/1.x NNN reason`); a 1xx interim answer is skipped."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                raise BadAnswer("the answer's head is too large")
            chunk = sock.recv(4096)
            if not chunk:
                raise BadAnswer("the other end closed the connection without an answer")
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise BadAnswer(f"not an HTTP answer: {head[:40]!r}")
        status = int(parts[1])
        if status >= 200:
            _drain(sock, head, len(buf))
            return status


def _drain(sock: socket.socket, head: bytes, have: int) -> None:
    """Read the answer's body (as urllib did) so the other end's last write is not met by a reset: its
    Content-Length, else to the end; at most MAX_BODY. The status is known: a failure here changes nothing."""
    length = MAX_BODY
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = min(int(value), MAX_BODY)
    with contextlib.suppress(OSError):
        while have < length:
            chunk = sock.recv(min(65536, length - have))
            if not chunk:
                return
            have += len(chunk)
