"""HMAC-SHA256 signed viewer tokens: `v1.<payload>.<signature>`, nothing stored server-side.

One key ring for every replica (edges and nodes): `HEARTH_TOKEN_SECRET=new:<secret>,old:<secret>` signs with the
first key and accepts each listed one by its id (`kid` in the payload), so a key is rotated without dropping a live
viewer: add the new key first, roll the replicas, drop the old key after HEARTH_TOKEN_TTL.

A node's tokens name it (`nd`, its HEARTH_NODE_ID) and a node refuses a token issued for another node (ForeignToken):
one key ring for the cluster does not make one node's viewer link open another node's desktop. A token without `nd`
(issued before tokens named their node) is still bound to its session, and the node checks where that lives."""

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

from hearth.config.secrets import parse_ring as parse_ring
from hearth.gateway.tokens.base import Claims, ForeignToken, Scope, TokenError


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


class SignedTokens:
    def __init__(
        self, key: bytes | dict[str, bytes], clock: Callable[[], float] = time.time, node: str | None = None
    ) -> None:
        ring = {"": key} if isinstance(key, bytes) else dict(key)
        if not ring or any(len(k) < 16 for k in ring.values()):
            raise ValueError("token signing key must be at least 16 bytes")
        self._ring = ring
        self._kid = next(iter(ring))  # the first key signs; every key verifies
        self._clock = clock
        self._node = node  # this node: tokens issued name it, tokens of another node are refused (None: unbound)

    def _sign(self, payload: str, kid: str | None = None) -> str:
        key = self._ring[self._kid if kid is None else kid]
        return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, session_id: str, scope: Scope, ttl: float) -> str:
        body: dict[str, object] = {
            "sid": session_id,
            "scp": scope.value,
            "exp": round(self._clock() + ttl, 3),
            "n": secrets.token_hex(4),
        }
        if self._kid:
            body["kid"] = self._kid
        if self._node is not None:
            body["nd"] = self._node
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"v1.{payload}.{self._sign(payload)}"

    def verify(self, token: str, session_id: str) -> Claims:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "v1":
            raise TokenError("malformed viewer token")
        _, payload, sig = parts
        try:
            body = json.loads(_unb64(payload))
            kid = str(body.get("kid", "")) if isinstance(body, dict) else ""
        except ValueError as exc:
            raise TokenError("malformed viewer token") from exc
        if kid not in self._ring:
            raise TokenError("viewer token signed with a retired key; request a new one")
        if not hmac.compare_digest(sig, self._sign(payload, kid)):
            raise TokenError("viewer token signature invalid")
        try:
            node = body.get("nd")
            if node is not None and not isinstance(node, str):
                raise TypeError(node)
            claims = Claims(str(body["sid"]), Scope(body["scp"]), float(body["exp"]), node)
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("malformed viewer token") from exc
        if claims.session_id != session_id:
            raise TokenError("viewer token belongs to another session")
        if claims.expires_at < self._clock():
            raise TokenError("viewer token expired; request a new one")
        if self._node is not None and claims.node is not None and claims.node != self._node:
            raise ForeignToken(claims, self._node)
        return claims
