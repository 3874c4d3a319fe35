"""API-key authentication: `Authorization: Bearer <key>`. Keys are kept only as SHA-256 digests in memory."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from fastapi import HTTPException, Request


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(digest(k) for k in keys)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str) -> bool:
        d = digest(presented)
        ok = False
        for known in self._digests:  # compare against every key: timing does not reveal which matched
            ok |= hmac.compare_digest(d, known)
        return ok

    async def __call__(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise HTTPException(
                401,
                "missing API key: send 'Authorization: Bearer <key>' (HEARTH_API_KEYS)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not self.check(value.strip()):
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
