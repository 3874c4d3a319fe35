"""A node's TLS certificate for its own address, issued from the cluster's CA (`hearth node cert`): in Kubernetes an
init container runs it at each node pod's start for $(HOST_IP), from the CA kept in a Secret, so every node serves
HEARTH_NODE_ADDRESS=https://<host IP>:4000 with a certificate edges verify against HEARTH_NODE_CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hearth.errors import HearthError, Hop

CERT_NAME = "node.pem"
KEY_NAME = "node.key"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    not_after: dt.datetime


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HearthError(
            Hop.TLS,
            f"the CA {what} {path} cannot be read ({exc.strerror or exc})",
            "give the CA's PEM files (in Kubernetes: the hearth-node-ca Secret mounted into the init container)",
        ) from exc


def load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
    """The CA certificate and its private key, checked to belong together and to be a CA."""
    try:
        ca = x509.load_pem_x509_certificate(_read(cert_path, "certificate"))
    except ValueError as exc:
        raise HearthError(Hop.TLS, f"{cert_path} is not a PEM certificate", "give the CA certificate") from exc
    try:
        key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
    except (ValueError, TypeError) as exc:
        raise HearthError(
            Hop.TLS, f"{key_path} is not an unencrypted PEM private key", "give the CA's key without a passphrase"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise HearthError(Hop.TLS, f"{key_path} is neither an EC nor an RSA key", "make the CA with an EC P-256 key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != ca.public_key().public_bytes(*spki):
        raise HearthError(
            Hop.TLS, f"{key_path} is not the key of the CA certificate {cert_path}", "give the matching pair"
        )
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise HearthError(
            Hop.TLS, f"{cert_path} is not a CA certificate (no basicConstraints CA:TRUE)", "give the CA's certificate"
        )
    return ca, key


def issue(ca_cert: Path, ca_key: Path, ip: str, out: Path, days: int = 90) -> Issued:
    """`out`/node.pem (the certificate for `ip`, then the CA) and `out`/node.key (0600), written atomically; valid
    `days` days, never past the CA's own end."""
    address = ipaddress.ip_address(ip)  # ValueError: the caller names the option
    ca, signer = load_ca(ca_cert, ca_key)
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca.not_valid_after_utc)
    if not_after <= now:
        raise HearthError(Hop.TLS, f"the CA certificate {ca_cert} has expired", "rotate the CA (docs/kubernetes.md)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hearth node {address}")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    try:
        out.mkdir(mode=0o755, parents=True, exist_ok=True)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
        key_path = _write(out / KEY_NAME, key_pem, 0o600)
        cert_path = _write(out / CERT_NAME, chain, 0o644)
    except OSError as exc:
        raise HearthError(
            Hop.TLS, f"the node certificate cannot be written to {out} ({exc.strerror or exc})", "give a writable --out"
        ) from exc
    return Issued(cert_path, key_path, not_after)


def _write(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
