"""The agent's probe of a sign-in page (hearth_agent/pageprobe.py) against real sockets on loopback: each hop that
can fail is named — `dns` for a name that does not resolve, `egress` for no connection, `tls` for a certificate
that does not verify — and a page that answers (TLS verified) is reachable."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.standins.standin import _certs
from hearth_agent.pageprobe import probe


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS listener for `localhost` (certificate signed by a throwaway CA) that completes handshakes; its port
    and the CA file."""
    ca, cert, key = _certs(("localhost",))
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "leaf.pem").write_bytes(cert + ca)
    (tmp_path / "leaf.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield listener.getsockname()[1], tmp_path / "ca.pem"
    stop.set()
    t.join(5)
    listener.close()


def test_a_name_that_does_not_resolve_is_the_dns_hop() -> None:
    found = probe("http://signin.hearth-test.invalid:9400/authorize?client_id=x")
    assert found is not None and found.hop == "dns" and found.host == "signin.hearth-test.invalid"
    assert "does not resolve from the sandbox" in found.detail and "client_id" not in found.detail


def test_no_connection_is_the_egress_hop() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    found = probe(f"https://127.0.0.1:{port}/authorize")  # nothing listens there any more
    assert found is not None and found.hop == "egress", found
    assert f"127.0.0.1:{port}" in found.detail


def test_a_certificate_that_does_not_verify_is_the_tls_hop(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    found = probe(f"https://localhost:{port}/authorize")  # the test CA is not trusted here
    assert found is not None and found.hop == "tls", found
    assert "does not verify" in found.detail


def test_a_page_that_answers_with_a_trusted_certificate_is_reachable(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, ca = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the sandbox's trust store, as HEARTH_EXTRA_CA_CERTS would set it
    assert probe(f"https://localhost:{port}/authorize") is None
    assert probe("about:blank") is None  # not a page to probe


def test_the_extra_cas_the_sandbox_trusts_count(tls_server: tuple[int, Path], tmp_path: Path) -> None:
    """A TLS-inspecting proxy's CA, handed to the browser and the CLIs (NODE_EXTRA_CA_CERTS): trusted here too."""
    port, ca = tls_server
    assert probe(f"https://localhost:{port}/authorize", cafiles=(str(tmp_path / "absent.pem"), str(ca))) is None
