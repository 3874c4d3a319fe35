"""HMAC-SHA256 signed viewer tokens: `v1.<payload>.<signature>`, nothing stored server-side."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from hearth.gateway.tokens.base import Claims, Scope, TokenError, TokenStore


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(path: Path) -> bytes:
    """The signing key from `path`, created (0600, 32 random bytes) when missing."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class SignedTokens(TokenStore):
    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("token signing key must be at least 16 bytes")
        self._key = key
        self._clock = clock

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, session_id: str, scope: Scope, ttl: float) -> str:
        body = {"sid": session_id, "scp": scope.value, "exp": round(self._clock() + ttl, 3), "n": secrets.token_hex(4)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"v1.{payload}.{self._sign(payload)}"

    def verify(self, token: str, session_id: str) -> Claims:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "v1":
            raise TokenError("malformed viewer token")
        _, payload, sig = parts
        if not hmac.compare_digest(sig, self._sign(payload)):
            raise TokenError("viewer token signature invalid")
        try:
            body = json.loads(_unb64(payload))
            claims = Claims(str(body["sid"]), Scope(body["scp"]), float(body["exp"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("malformed viewer token") from exc
        if claims.session_id != session_id:
            raise TokenError("viewer token belongs to another session")
        if claims.expires_at < self._clock():
            raise TokenError("viewer token expired; request a new one")
        return claims
