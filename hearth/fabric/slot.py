"""Pure naming and addressing for one sandbox slot.

Compute, then act: every name hearth gives a resource is derived from (fabric namespace, slot index), so the
reconciler can map any leftover `hearth…` resource back to its owner, and never touches anything else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

# Link names live inside the fabric namespace, so they need no instance prefix; they must fit IFNAMSIZ (15).
_VETH = "hearth-v"
_TAP = "hearth-t"
_LINK_RE = re.compile(r"^hearth-(v|t)(\d{1,6})$")
UPLINK_INNER = "hearth-up"


@dataclass(frozen=True)
class Slot:
    """One sandbox's place in the fabric: index `i` owns pool address `pool_start + i`."""

    fabric: str  # fabric netns name, also the prefix of sandbox namespaces
    index: int
    ip: IPv4Address
    network: IPv4Network
    gateway: IPv4Address

    @property
    def netns(self) -> str:
        """The sandbox's own network namespace (netns driver); global, hence prefixed by the fabric."""
        return f"{self.fabric}-s{self.index}"

    @property
    def veth_host(self) -> str:
        """Bridge-side end of the sandbox veth pair (in the fabric namespace)."""
        return f"{_VETH}{self.index}"

    @property
    def tap_name(self) -> str:
        """TAP device of a VM sandbox (in the fabric namespace)."""
        return f"{_TAP}{self.index}"

    @property
    def mac(self) -> str:
        """Locally administered guest MAC, unique per slot: 02:68:74 ('h','t') + 24-bit index."""
        i = self.index
        return f"02:68:74:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def netmask(self) -> IPv4Address:
        return self.network.netmask

    @property
    def kernel_ip_arg(self) -> str:
        """The one guest network mechanism for VMs: `ip=<guest>::<gw>:<mask>::eth0:off`."""
        return f"ip={self.ip}::{self.gateway}:{self.netmask}::eth0:off"


def uplink_outer(fabric: str) -> str:
    """Outer end of the optional egress uplink (host namespace, or HEARTH_UPLINK_NETNS): a global name, so derived from a hash of the fabric name
    (two fabrics sharing a long prefix must not collide) and ≤ 15 characters: `hup-<10 hex>`."""
    return f"hup-{hashlib.sha256(fabric.encode()).hexdigest()[:10]}"


def outer_where(uplink_netns: str | None) -> str:
    """Where the uplink's outer end lives, in words: HEARTH_UPLINK_NETNS, or the host's own namespace."""
    return f"namespace {uplink_netns}" if uplink_netns else "the host namespace"


def sandbox_netns_index(fabric: str, name: str) -> int | None:
    """Parse `<fabric>-s<index>` back to the slot index; None for anything hearth did not name."""
    m = re.fullmatch(re.escape(fabric) + r"-s(\d{1,6})", name)
    return int(m.group(1)) if m else None


def link_index(name: str) -> tuple[str, int] | None:
    """Parse a fabric link name back to ("veth"|"tap", index); None for anything hearth did not name."""
    m = _LINK_RE.fullmatch(name)
    if not m:
        return None
    return ("veth" if m.group(1) == "v" else "tap", int(m.group(2)))


def slot_for(fabric: str, network: IPv4Network, gateway: IPv4Address, pool_start: IPv4Address, index: int) -> Slot:
    """The slot with the given index: its address is `pool_start + index`."""
    return Slot(fabric=fabric, index=index, ip=pool_start + index, network=network, gateway=gateway)
