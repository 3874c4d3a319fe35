"""What a viewer token says (its claims and scope), why one is refused, and the seam its users see: `TokenStore`, a
Protocol of two methods (issue, verify) that `hearth.gateway.tokens.signed.SignedTokens` meets."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Scope(StrEnum):
    VIEW = "view"  # may watch; input from the viewer is dropped
    CONTROL = "control"  # may watch and type/click


@dataclass(frozen=True)
class Claims:
    session_id: str
    scope: Scope
    expires_at: float
    node: str | None = None  # the node it was issued for (None: issued before tokens named their node)


class TokenError(Exception):
    """The token is malformed, forged, expired or for another session."""


class ForeignToken(TokenError):
    """A genuine token for this session, issued for another node: this node refuses it. `claims` are verified (the
    gateway still says where the session lives when it lives elsewhere)."""

    def __init__(self, claims: Claims, here: str) -> None:
        super().__init__(f"viewer token was issued for node {claims.node}, not this node ({here}); request a new one")
        self.claims = claims
        self.issued_for = claims.node or ""
        self.here = here


class TokenStore(Protocol):
    def issue(self, session_id: str, scope: Scope, ttl: float) -> str:
        """A new token for `session_id` with `scope`, valid for `ttl` seconds."""

    def verify(self, token: str, session_id: str) -> Claims:
        """The token's claims, or TokenError naming why it is refused."""
