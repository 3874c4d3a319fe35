"""Where sandboxes never go, and what HEARTH_EGRESS_ALLOW may not cover (pure, a leaf module).

The config check (hearth/config/check.py), the proxy's reach (hearth/config/proxy.py) and hearth.egress.policy/rules
all need these ranges; they live in the config layer, importing nothing of hearth at run time.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hearth.config.settings import Settings

# IPv4 ranges no sandbox reaches unless HEARTH_EGRESS_ALLOW lists them (RFC 6890 and friends). The documentation
# ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) are not here: tests' stand-in internet lives there.
BLOCKED: tuple[IPv4Network, ...] = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254), the uplink itself
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # private (the fabric's default network among them)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
BLOCKED_V6 = "fc00::/7 (ULA), fe80::/10, ::1 — all of IPv6: the fabric routes IPv4 only"


def fabric_ranges(s: Settings) -> list[tuple[str, IPv4Network]]:
    """What an allow entry must never cover: the sandbox network, the bridge address, the uplink /30."""
    return [
        ("INTERNAL_NETWORK", s.internal_network),
        ("BRIDGE_IP", IPv4Network(f"{s.bridge_ip}/32")),
        ("HEARTH_UPLINK_NETWORK", s.uplink_network),
    ]


def allow_problems(s: Settings) -> list[str]:
    """`hearth config check` refusals for HEARTH_EGRESS_ALLOW, each naming the fix."""
    out = []
    for entry in s.egress_allow:
        for label, net in fabric_ranges(s):
            if entry.overlaps(net):
                out.append(
                    f"HEARTH_EGRESS_ALLOW entry {entry} covers the fabric ({label} {net}): sandboxes would reach "
                    "the host, the fabric or each other; list only the outside ranges they need, e.g. 10.20.0.0/16"
                )
                break
    return out
