"""API-key authentication: `Authorization: Bearer <key>`. Keys are kept only as SHA-256 digests in memory.

A node also admits a request an edge forwarded with a valid node credential (X-Hearth-Edge, hearth/cluster/credential.py)
in place of the caller's API key, which the edge checked itself."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

from hearth.cluster.credential import HEADER as EDGE_HEADER
from hearth.cluster.credential import NodeCredential


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    def __init__(self, keys: Iterable[str], edges: NodeCredential | None = None) -> None:
        self._digests = tuple(digest(k) for k in keys)
        self._edges = edges  # a node: requests from edges carry the node credential instead of an API key

    def __bool__(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str) -> bool:
        d = digest(presented)
        ok = False
        for known in self._digests:  # compare against every key: timing does not reveal which matched
            ok |= hmac.compare_digest(d, known)
        return ok

    def from_edge(self, request: HTTPConnection) -> bool | None:
        """None: no node credential presented (or none configured); else whether it is valid for this request (a
        WebSocket is signed as a GET of its path)."""
        presented = request.headers.get(EDGE_HEADER)
        if self._edges is None or presented is None:
            return None
        return self._edges.verify(presented, str(request.scope.get("method", "GET")), request.url.path)

    def admits(self, request: HTTPConnection) -> bool:
        """A valid node credential from an edge, or a valid `Authorization: Bearer` API key."""
        edge = self.from_edge(request)
        if edge is not None:
            return edge
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(value) and self.check(value.strip())

    async def __call__(self, request: Request) -> None:
        edge = self.from_edge(request)
        if edge is not None:
            if not edge:
                raise HTTPException(
                    401,
                    "invalid node credential (X-Hearth-Edge): the edge's HEARTH_NODE_CREDENTIAL key is not in this "
                    "node's ring, or the clocks differ by more than 5 minutes",
                )
            return
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
