"""An HTTPS server whose certificate comes from a throwaway CA (for proxy and CA-trust tests): on loopback, or on a
socket made elsewhere (e.g. in a test fabric's namespace); it records the head of every request it answered."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hearth.standins.standin import _certs

BODY = b"hello from the provider\n"


@dataclass
class TlsServer:
    ca: Path  # the throwaway CA's PEM (for HEARTH_EXTRA_CA_CERTS)
    port: int
    heads: list[str] = field(default_factory=list)  # each answered request's head (verified handshakes only)


def make_certs(d: Path, host: str) -> Path:
    """A throwaway CA and a leaf for `host` in `d` (ca.pem, leaf.pem, key.pem); returns the CA's path."""
    ca, leaf, key = _certs((host,))
    (d / "ca.pem").write_bytes(ca)
    (d / "leaf.pem").write_bytes(leaf)
    (d / "key.pem").write_bytes(key)
    return d / "ca.pem"


@contextlib.contextmanager
def tls_server(d: Path, host: str, sock: socket.socket | None = None) -> Iterator[TlsServer]:
    """Answers every request 200 with BODY (certificates from `make_certs`, made now unless `d` has them); `sock`
    (unbound) is bound to port 0 on its own address family's any."""
    if not (d / "ca.pem").exists():
        make_certs(d, host)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "leaf.pem", d / "key.pem")
    if sock is None:
        srv = socket.create_server(("127.0.0.1", 0))
    else:
        srv = sock
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", 0))
        srv.listen(16)
    out = TlsServer(d / "ca.pem", int(srv.getsockname()[1]))

    def one(conn: socket.socket) -> None:
        try:
            with ctx.wrap_socket(conn, server_side=True) as s:
                s.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                out.heads.append(head.decode("latin-1"))
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)
        except (OSError, ssl.SSLError):
            return

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, name="tls-server", daemon=True).start()
    try:
        yield out
    finally:
        srv.close()
