"""`hearth node cert` (hearth/cluster/nodecert.py): the certificate it issues from a CA serves a real TLS handshake
that verifies against that CA for the IP it was issued for, and for no other IP and no other CA; bad input names the
fix and writes nothing."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from hearth.cli.main import app


def make_ca(out: Path, name: str = "ca") -> tuple[Path, Path]:
    """`out`/<name>.crt and <name>.key: a self-signed CA, as docs/kubernetes.md makes it with openssl."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hearth {name}")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    (out / f"{name}.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out / f"{name}.crt", out / f"{name}.key"


def node_cert(ca: tuple[Path, Path], ip: str, out: Path) -> tuple[int, str]:
    args = ["node", "cert", "--ca-cert", str(ca[0]), "--ca-key", str(ca[1]), "--ip", ip, "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert "Traceback" not in res.output, res.output
    return res.exit_code, res.output


def handshake(cert_dir: Path, trust: Path, connect_ip: str) -> None:
    """A TLS server on 127.0.0.1 with the issued pair; a client trusting only `trust` connects asking for
    `connect_ip` (as an edge verifies HEARTH_NODE_ADDRESS's host). Raises ssl.SSLCertVerificationError on a refusal."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_dir / "node.pem", cert_dir / "node.key")
    client_ctx = ssl.create_default_context(cafile=str(trust))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(10)
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass  # the client refused the certificate: the handshake breaks off

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=connect_ip) as tls:
                    tls.sendall(b"x")
        finally:
            t.join(timeout=10)


def test_the_issued_certificate_verifies_for_its_ip_only(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    code, output = node_cert(ca, "127.0.0.1", tmp_path / "tls")
    assert code == 0, output
    key_mode = stat.S_IMODE((tmp_path / "tls" / "node.key").stat().st_mode)
    assert key_mode == 0o600
    handshake(tmp_path / "tls", ca[0], "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(tmp_path / "tls", ca[0], "127.0.0.2")  # same CA, another node's address
    other = make_ca(tmp_path / "other", "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path / "tls", other[0], "127.0.0.1")  # a CA that did not issue it


def test_a_reissue_replaces_the_pair(tmp_path: Path) -> None:
    """An init container runs it at every pod start, over the last pod's files (a new host IP, a rotated CA)."""
    ca = make_ca(tmp_path / "ca")
    assert node_cert(ca, "127.0.0.2", tmp_path / "tls")[0] == 0
    rotated = make_ca(tmp_path / "new", "new")
    assert node_cert(rotated, "127.0.0.1", tmp_path / "tls")[0] == 0
    handshake(tmp_path / "tls", rotated[0], "127.0.0.1")
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["node.key", "node.pem"]


def test_bad_input_names_the_fix_and_writes_nothing(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    other = make_ca(tmp_path / "other", "other")
    out = tmp_path / "tls"
    cases = [
        ((ca[0], ca[1]), "10.0.0.300", "not an IP address"),
        ((ca[0], other[1]), "10.0.0.5", "is not the key of the CA certificate"),
        ((tmp_path / "absent.crt", ca[1]), "10.0.0.5", "cannot be read"),
        ((ca[1], ca[1]), "10.0.0.5", "is not a PEM certificate"),
    ]
    for pair, ip, words in cases:
        code, output = node_cert(pair, ip, out)
        assert code == 2 and words in " ".join(output.split()), (words, output)
    assert not out.exists()
