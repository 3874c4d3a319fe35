"""Who may go out, where never, and which names a sandbox may resolve (pure).

HEARTH_EGRESS decides which sandboxes get a route out through the fabric's uplink:
  false   — none (no uplink at all; the value of old)
  true    — every sandbox (the meaning of old)
  signin  — sign-in sandboxes (remote_browser and direct, both with a provider) and users' CLI sandboxes; a plain
            desktop without a provider gets none
Whatever goes out never reaches BLOCKED (private, CGNAT, link-local and metadata, loopback, multicast, …) unless
HEARTH_EGRESS_ALLOW lists the range; an allow entry that covers the fabric or the uplink is a configuration error.
Under HEARTH_EGRESS_POLICY=provider, the DNS forwarder answers a sign-in sandbox only for names within its provider's
`egress_domains` (a CLI sandbox: any provider's).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from hearth.config import Settings

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


@dataclass(frozen=True)
class Grant:
    """One sandbox allowed out: its address, its owner (session or CLI sandbox id) and — under the provider
    policy — the domains it may resolve (None: any name)."""

    ip: IPv4Address
    owner: str
    domains: tuple[str, ...] | None = None


def wants_egress(s: Settings, *, cli: bool, provider: str | None) -> bool:
    """Whether a sandbox gets a route out: a CLI sandbox, or a session sandbox with/without a provider."""
    if s.egress is True:
        return True
    if s.egress == "signin":
        return cli or bool(provider)
    return False


def resolv_conf(s: Settings) -> str:
    """What every sandbox's /etc/resolv.conf says: the DNS forwarder on the bridge (hearth/egress/dns.py)."""
    return f"nameserver {s.bridge_ip}\noptions timeout:2 attempts:2\n"


def normalize_domain(name: str) -> str:
    return name.strip().rstrip(".").lower()


def name_allowed(qname: str, domains: Iterable[str]) -> bool:
    """`qname` is one of `domains` or below one of them (`a.claude.ai` is within `claude.ai`; `evilclaude.ai` is
    not)."""
    q = normalize_domain(qname)
    for d in domains:
        d = normalize_domain(d)
        if d and (q == d or q.endswith("." + d)):
            return True
    return False


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


def allowed_ranges(s: Settings) -> list[IPv4Network]:
    """HEARTH_EGRESS_ALLOW, collapsed, minus nothing (config check refuses entries covering the fabric)."""
    return sorted(set(s.egress_allow), key=lambda n: (int(n.network_address), n.prefixlen))
