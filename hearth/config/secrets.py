"""The keys given in the settings, parsed (stdlib only; the folders that use them import them from here): the
gateway's token ring (HEARTH_TOKEN_SECRET), the edge → node credential ring (HEARTH_NODE_CREDENTIAL) and the vault's
master key (HEARTH_MASTER_KEY). Each error names the fix, never the value."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

MIN_SECRET = 16  # bytes per node-credential key


def parse_ring(secret: str) -> dict[str, bytes]:
    """`kid:secret,kid:secret` (the first signs), or one bare secret (key id ""). ValueError names the fix."""
    if ":" not in secret:
        return {"": secret.encode()}
    ring: dict[str, bytes] = {}
    for part in secret.split(","):
        kid, sep, value = part.strip().partition(":")
        if not sep or not kid or not value or kid in ring:
            raise ValueError("HEARTH_TOKEN_SECRET must be `kid:secret[,kid:secret…]` with distinct non-empty key ids")
        ring[kid] = value.encode()
    return ring


def parse_credential_ring(value: str) -> dict[str, bytes]:
    """`kid:secret[,kid:secret…]` → {kid: secret}, in order (the first signs). ValueError names the fix."""
    ring: dict[str, bytes] = {}
    for part in value.split(","):
        kid, sep, secret = part.strip().partition(":")
        if not sep or not kid or not secret or kid in ring or "." in kid:
            raise ValueError(
                "HEARTH_NODE_CREDENTIAL must be `kid:secret[,kid:secret…]` with distinct non-empty key ids "
                "without '.' (e.g. n1:$(openssl rand -hex 32))"
            )
        if len(secret.encode()) < MIN_SECRET:
            raise ValueError(
                f"HEARTH_NODE_CREDENTIAL: key {kid!r} must be at least {MIN_SECRET} bytes (e.g. openssl rand -hex 32)"
            )
        ring[kid] = secret.encode()
    return ring


class VaultKeyError(Exception):
    """A master key is missing, malformed or unknown."""


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    material: bytes

    @classmethod
    def of(cls, material: bytes) -> MasterKey:
        if len(material) != 32:
            raise VaultKeyError(
                f"master key must be 32 bytes (AES-256), got {len(material)}; generate one with "
                "`python3 -c 'import secrets,base64;print(base64.b64encode(secrets.token_bytes(32)).decode())'`"
            )
        return cls(hashlib.sha256(b"hearth-key-id" + material).hexdigest()[:12], material)


def parse_key(text: str) -> MasterKey:
    text = text.strip()
    for decode in (binascii.unhexlify, base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return MasterKey.of(raw)
    raise VaultKeyError("HEARTH_MASTER_KEY must be 32 bytes encoded as hex or base64")
