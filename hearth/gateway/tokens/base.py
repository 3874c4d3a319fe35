"""The token-store seam: issue and verify (two methods)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    VIEW = "view"  # may watch; input from the viewer is dropped
    CONTROL = "control"  # may watch and type/click


@dataclass(frozen=True)
class Claims:
    session_id: str
    scope: Scope
    expires_at: float


class TokenError(Exception):
    """The token is malformed, forged, expired or for another session."""


class TokenStore(ABC):
    @abstractmethod
    def issue(self, session_id: str, scope: Scope, ttl: float) -> str:
        """A new token for `session_id` with `scope`, valid for `ttl` seconds."""

    @abstractmethod
    def verify(self, token: str, session_id: str) -> Claims:
        """The token's claims, or TokenError naming why it is refused."""
