"""AES-256-GCM sealing. The associated data binds a ciphertext to its owner (user, provider), so a sealed record
copied onto another user's row does not open."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hearth.vault.keys import KeyRing


class SealError(Exception):
    """A record cannot be opened (wrong key, tampered, or bound to another owner)."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    nonce: bytes
    ciphertext: bytes


def aad(user_id: str, provider: str) -> bytes:
    return f"hearth/v1/{user_id}/{provider}".encode()


def seal(ring: KeyRing, plaintext: bytes, user_id: str, provider: str) -> Sealed:
    nonce = os.urandom(12)
    ct = AESGCM(ring.current.material).encrypt(nonce, plaintext, aad(user_id, provider))
    return Sealed(ring.current.key_id, nonce, ct)


def unseal(ring: KeyRing, sealed: Sealed, user_id: str, provider: str) -> bytes:
    key = ring.get(sealed.key_id)
    try:
        return AESGCM(key.material).decrypt(sealed.nonce, sealed.ciphertext, aad(user_id, provider))
    except InvalidTag:
        raise SealError(
            "credential record failed authentication (tampered, or bound to another user/provider)"
        ) from None
