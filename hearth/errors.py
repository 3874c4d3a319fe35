"""hearth's own exceptions. Every failure names the hop of the session path that failed and the fix.

Foreign errors (netlink, nftables, QMP, Firecracker API, sockets) are converted into these at the boundary.
"""

from __future__ import annotations

from enum import StrEnum


class Hop(StrEnum):
    """The hops of one session's path, in the order `hearth doctor` walks them."""

    CONFIG = "config"
    FABRIC = "fabric"
    BRIDGE = "bridge"
    FORWARDING = "forwarding"
    NAT = "nat"
    LINK = "link"
    ARP = "arp"
    ICMP = "icmp"
    AGENT = "agent"
    VNC = "vnc"
    RFB = "rfb"
    GATEWAY = "gateway"
    DRIVER = "driver"
    STORE = "store"
    NODE = "node"  # a host of a cluster (hearth/cluster): down, draining, unreachable from the edge
    # beyond the fabric, from inside a sandbox (the provider's sign-in page: hearth_agent/pageprobe.py)
    DNS = "dns"  # the name does not resolve
    EGRESS = "egress"  # no connection out to the address
    TLS = "tls"  # no handshake, or a certificate that does not verify
    PROXY = "proxy"  # the upstream egress proxy (HEARTH_EGRESS_PROXY): down, or refusing hearth's credentials


class HearthError(Exception):
    """A failure at one hop, with a concrete hint for the fix."""

    def __init__(self, hop: Hop, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hop = hop
        self.message = message
        self.hint = hint

    @property
    def reason(self) -> str:
        """One line suitable for a session's failure reason or a WebSocket close reason."""
        text = f"[{self.hop.value}] {self.message}"
        if self.hint:
            text += f" — fix: {self.hint}"
        return text

    def __str__(self) -> str:
        return self.reason


class ConfigError(HearthError):
    """Configuration is inconsistent; `problems` lists every problem found, each naming the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(Hop.CONFIG, "; ".join(problems), "")
        self.problems = problems


class FabricError(HearthError):
    """The fabric namespace, bridge, forwarding or NAT could not be built or is broken."""


class PoolExhausted(HearthError):
    """No free address is left in the IP pool."""

    def __init__(self, size: int) -> None:
        super().__init__(
            Hop.FABRIC,
            f"IP pool exhausted: all {size} addresses are leased",
            "cancel idle sessions or widen IP_POOL_START..IP_POOL_END inside INTERNAL_NETWORK",
        )


class DriverError(HearthError):
    """The sandbox driver failed to start, inspect or stop a sandbox."""


class NotReady(HearthError):
    """A readiness gate did not open in time."""


class StoreError(HearthError):
    """The state store (database or data directory) cannot be read or written right now: API answers 503."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(Hop.STORE, message, hint or "hearth retries on its own once the store is back")


class SchemaError(HearthError):
    """The database schema is not the one this hearth expects."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(Hop.STORE, message, hint)
