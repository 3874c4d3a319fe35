"""The node credential: what an edge presents to a node instead of the caller's API key (HEARTH_NODE_CREDENTIAL).

A key ring `kid:secret[,kid:secret…]`, the same on every edge and node: the first key signs, every key verifies. To
rotate: put the new key first on every node (it verifies both), then on every edge (they sign with it), then drop the
old one everywhere. An edge checks the caller's API key itself and forwards the request without it, carrying

    X-Hearth-Edge: <kid>.<unix time>.<base64url HMAC-SHA256(secret, "hearth-edge.<kid>.<time>.<METHOD>.<path>")>

which a node accepts within MAX_SKEW seconds of its own clock, for that method and path only. The secret never leaves
the process; a node credential is not an API key (a node does not accept it as one, nor the reverse).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hearth.config.secrets import parse_credential_ring as parse_credential_ring
from hearth.errors import HearthError, Hop

if TYPE_CHECKING:
    from hearth.config import Settings

HEADER = "x-hearth-edge"
MAX_SKEW = 300.0  # seconds between an edge's clock and a node's that a credential tolerates


class NodeCredential:
    """Signs (edges) and verifies (nodes) the X-Hearth-Edge header."""

    def __init__(self, ring: dict[str, bytes], clock: Callable[[], float] = time.time) -> None:
        if not ring:
            raise ValueError("HEARTH_NODE_CREDENTIAL is empty")
        self._ring = dict(ring)
        self._kid = next(iter(ring))
        self._clock = clock

    @classmethod
    def from_setting(cls, value: str) -> NodeCredential | None:
        """None when HEARTH_NODE_CREDENTIAL is unset (edges then forward the caller's API key, as before)."""
        return cls(parse_credential_ring(value)) if value else None

    @property
    def signing_kid(self) -> str:
        return self._kid

    def _mac(self, kid: str, stamp: str, method: str, path: str) -> str:
        msg = f"hearth-edge.{kid}.{stamp}.{method.upper()}.{path}".encode()
        digest = hmac.new(self._ring[kid], msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def present(self, method: str, path: str) -> str:
        """The header value an edge sends with a request of `method` to `path` (the node's URL path)."""
        stamp = str(int(self._clock()))
        return f"{self._kid}.{stamp}.{self._mac(self._kid, stamp, method, path)}"

    def verify(self, value: str, method: str, path: str) -> bool:
        """Whether `value` was made by a key of this ring, for this method and path, within MAX_SKEW."""
        kid, _, rest = value.strip().partition(".")
        stamp, _, mac = rest.partition(".")
        if kid not in self._ring or not stamp.isdigit() or not mac:
            return False
        if abs(self._clock() - int(stamp)) > MAX_SKEW:
            return False
        return hmac.compare_digest(mac.encode(), self._mac(kid, stamp, method, path).encode())


def node_tls(settings: Settings) -> ssl.SSLContext:
    """How edges (API calls, probes, the viewer relay) and nodes (asking peers' /ready when cut off from the store)
    verify nodes that serve TLS: against HEARTH_NODE_CA, else the system's CAs."""
    try:
        return ssl.create_default_context(cafile=str(settings.node_ca) if settings.node_ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise HearthError(
            Hop.CONFIG,
            f"HEARTH_NODE_CA {settings.node_ca} cannot be loaded ({exc})",
            "give the PEM file of the CA that signed the nodes' certificates",
        ) from exc
