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

# The ranges live in the config layer (its check and hearth.config.proxy use them too); re-exported here.
from hearth.config.ranges import BLOCKED as BLOCKED
from hearth.config.ranges import BLOCKED_V6 as BLOCKED_V6
from hearth.config.ranges import allow_problems as allow_problems
from hearth.config.ranges import fabric_ranges as fabric_ranges


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


def allowed_ranges(s: Settings) -> list[IPv4Network]:
    """HEARTH_EGRESS_ALLOW, collapsed, minus nothing (config check refuses entries covering the fabric)."""
    return sorted(set(s.egress_allow), key=lambda n: (int(n.network_address), n.prefixlen))
