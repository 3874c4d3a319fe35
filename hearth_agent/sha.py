"""SHA-256 from CPython's own small `_sha256` module: hashlib loads OpenSSL's libcrypto (≈0.5 MiB of every agent's
memory, issue 25) for the same digest. Another build without `_sha256`: hashlib's."""

from __future__ import annotations


def sha256(data: bytes) -> bytes:
    try:
        import _sha256  # type: ignore[import-not-found]

        digest: bytes = _sha256.sha256(data).digest()
    except ImportError:
        import hashlib

        digest = hashlib.sha256(data).digest()
    return digest
