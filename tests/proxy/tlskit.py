"""An HTTPS server on loopback whose certificate comes from a throwaway CA (for proxy and CA-trust tests)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

from hearth.providers.standin import _certs

BODY = b"hello from the provider\n"


@contextlib.contextmanager
def tls_server(d: Path, host: str, bind: str = "127.0.0.1") -> Iterator[tuple[Path, int]]:
    """(the CA's PEM file, the port); answers every request 200 with BODY."""
    ca, leaf, key = _certs((host,))
    (d / "ca.pem").write_bytes(ca)
    (d / "leaf.pem").write_bytes(leaf)
    (d / "key.pem").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "leaf.pem", d / "key.pem")
    srv = socket.create_server((bind, 0))
    port = int(srv.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    s.settimeout(10)
                    s.recv(65536)
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)
            except (OSError, ssl.SSLError):
                continue

    threading.Thread(target=serve, name="tls-server", daemon=True).start()
    try:
        yield d / "ca.pem", port
    finally:
        srv.close()
