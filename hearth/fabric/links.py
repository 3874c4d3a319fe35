"""The fabric's links and kernel settings, read and converged over netlink (blocking: hearth/fabric/fabric.py runs
each on a thread with a timeout): the bridge (its address, its pinned MAC), the sysctls of the fabric namespace,
the uplink veth pair and its ends, the ports on the bridge, and one read-only observation of all of it."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric import netlink
from hearth.fabric.base import PortStatus
from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import UPLINK_INNER, link_index, outer_where, uplink_outer

log = logging.getLogger("hearth.fabric")
IFF_UP = 0x1
IP_FORWARD = "net/ipv4/ip_forward"
BRIDGE_MAC = "02:68:62:00:00:01"  # locally administered ('h','b'); slots use 02:68:74:… (slot.py)


def fabric_sysctls(bridge: str) -> dict[str, str]:
    """/proc/sys entries of the fabric namespace and their wanted values (pure)."""
    return {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/conf/all/rp_filter": "1",
        "net/ipv4/conf/default/rp_filter": "1",
        "net/ipv4/conf/all/send_redirects": "0",
        "net/ipv4/conf/default/send_redirects": "0",
        f"net/ipv4/conf/{bridge}/send_redirects": "0",
        # the fabric answers a sandbox's ARP for another sandbox with its own MAC (private-VLAN proxy ARP, at once):
        # what one sandbox sends another is then routed into the forward chain and dropped there, counted `fabric`
        # per sandbox under egress (hearth/egress/rules.py) — port isolation alone drops the ARP without a count
        f"net/ipv4/conf/{bridge}/proxy_arp_pvlan": "1",
        f"net/ipv4/neigh/{bridge}/proxy_delay": "0",
    }


# ---- blocking steps (run on worker threads) ----------------------------------------------------------------


def _is_up(h: Any, index: int) -> bool:
    return bool(h.get_links(index)[0]["flags"] & IFF_UP)


def _isolated(link: Any) -> bool:
    info = netlink.attr(link, "IFLA_LINKINFO")
    if info is None or netlink.attr(info, "IFLA_INFO_SLAVE_KIND") != "bridge":
        return False
    data = netlink.attr(info, "IFLA_INFO_SLAVE_DATA")
    return bool(data is not None and netlink.attr(data, "IFLA_BRPORT_ISOLATED"))


def _converge_addr(h: Any, index: int, want: str, label: str) -> list[str]:
    """Make `want` ("ip/prefix") the link's only IPv4 address. Wrong ones go first: deleting a primary address
    would also take the secondaries of its subnet (the wanted one included) with it."""
    changes = []
    present = netlink.ipv4_addresses(h, index)
    for addr in present:
        if addr != want:
            ip, _, plen = addr.partition("/")
            h.addr("del", index=index, address=ip, prefixlen=int(plen))
            changes.append(f"{label}: removed address {addr}")
    if want not in present:
        ip, _, plen = want.partition("/")
        h.addr("add", index=index, address=ip, prefixlen=int(plen))
        changes.append(f"{label}: added address {want}")
    return changes


def _set_up(h: Any, index: int, label: str) -> list[str]:
    if _is_up(h, index):
        return []
    h.link("set", index=index, state="up")
    return [f"{label}: set up"]


def _ports(h: Any) -> list[PortStatus]:
    links = h.get_links()
    names = {link["index"]: str(netlink.attr(link, "IFLA_IFNAME")) for link in links}
    out = []
    for link in links:
        name = names[link["index"]]
        if link_index(name) is not None:
            state = str(netlink.attr(link, "IFLA_OPERSTATE") or "unknown").lower()
            out.append(PortStatus(name, names.get(netlink.attr(link, "IFLA_MASTER")), _isolated(link), state))
    return out


def bridge_sync(s: Settings) -> tuple[bool, list[str]]:
    """lo up; the bridge with exactly BRIDGE_IP/prefix, up; every sandbox port on it and isolated."""
    br = s.bridge_device
    with netlink.ns(s.fabric_netns, Hop.BRIDGE) as h:
        changes = _set_up(h, netlink.link_index(h, "lo") or 1, "lo")
        idx = netlink.link_index(h, br)
        created = idx is None
        if idx is None:
            h.link("add", ifname=br, kind="bridge", address=BRIDGE_MAC)
            idx = netlink.link_index(h, br)
            assert idx is not None
        elif (kind := netlink.link_kind(h, idx)) != "bridge":
            raise FabricError(
                Hop.BRIDGE,
                f"{br} in namespace {s.fabric_netns} is a {kind or 'non-bridge'} link, not a bridge",
                f"delete it (ip -n {s.fabric_netns} link del {br}) or set BRIDGE_DEVICE to another name",
            )
        if str(netlink.attr(h.get_links(idx)[0], "IFLA_ADDRESS")).lower() != BRIDGE_MAC:
            h.link("set", index=idx, address=BRIDGE_MAC)
            changes.append(f"{br}: MAC set to {BRIDGE_MAC}")
        changes += _converge_addr(h, idx, f"{s.bridge_ip}/{s.prefixlen}", br) + _set_up(h, idx, br)
        if created:
            changes = [f"created bridge {br} with {s.bridge_ip}/{s.prefixlen}"]
        for port in _ports(h):  # e.g. detached when someone deleted and recreated the bridge
            pidx = netlink.link_index(h, port.name)
            if port.master != br:
                h.link("set", index=pidx, master=idx)
                changes.append(f"{port.name}: attached to {br}")
            if not port.isolated or port.master != br:
                h.brport("set", index=pidx, isolated=1)
                changes.append(f"{port.name}: isolated")
    return created, changes


def sysctls_sync(netns: str | None, wanted: dict[str, str]) -> list[str]:
    def work() -> list[str]:
        changed = []
        for key, value in wanted.items():
            path = Path("/proc/sys") / key
            if path.read_text().strip() != value:
                path.write_text(value)
                changed.append(f"{key.replace('/', '.')}={value}")
        return changed

    return call_in_netns(netns, work)


def _uplink_ends(r: Any, h: Any, s: Settings) -> tuple[int | None, int | None, bool]:
    """(host end index, fabric end index, whether they are the two ends of one veth pair — i.e. ours)."""
    outer = netlink.link_index(r, uplink_outer(s.fabric_netns))
    inner = netlink.link_index(h, UPLINK_INNER)
    if outer is None or inner is None or netlink.link_kind(r, outer) != "veth":
        return outer, inner, False
    paired = (
        netlink.attr(r.get_links(outer)[0], "IFLA_LINK") == inner
        and netlink.attr(h.get_links(inner)[0], "IFLA_LINK") == outer
    )
    return outer, inner, paired


def uplink_sync(s: Settings) -> tuple[bool, list[str]]:
    """The egress veth pair: outer end (host namespace, or HEARTH_UPLINK_NETNS) with the first /30 address, fabric
    end with the second, default route."""
    outer_name = uplink_outer(s.fabric_netns)
    gw, me = (str(a) for a in s.uplink_network.hosts())
    plen = s.uplink_network.prefixlen
    created, changes = False, []
    where = outer_where(s.uplink_netns)
    with netlink.at(s.uplink_netns or None, Hop.NAT) as r, netlink.ns(s.fabric_netns, Hop.NAT) as h:
        outer, inner, paired = _uplink_ends(r, h, s)
        if outer is not None and not paired:
            raise FabricError(
                Hop.NAT,
                f"{outer_name} exists in {where} but is not the uplink of fabric {s.fabric_netns}",
                "delete that link, or choose another HEARTH_FABRIC_NETNS (the uplink name is derived from it)",
            )
        if outer is None:
            if inner is not None:  # a stray end in our namespace whose peer is not ours
                h.link("del", index=inner)
                changes.append(f"{UPLINK_INNER}: removed stray link")
            r.link("add", ifname=outer_name, kind="veth", peer={"ifname": UPLINK_INNER, "net_ns_fd": s.fabric_netns})
            created = True
            outer, inner = netlink.link_index(r, outer_name), netlink.link_index(h, UPLINK_INNER)
        if outer is None or inner is None:
            raise FabricError(Hop.NAT, f"the uplink pair {outer_name}/{UPLINK_INNER} did not appear", "see dmesg")
        changes += _converge_addr(r, outer, f"{gw}/{plen}", outer_name) + _set_up(r, outer, outer_name)
        changes += _converge_addr(h, inner, f"{me}/{plen}", UPLINK_INNER) + _set_up(h, inner, UPLINK_INNER)
        default = [x for x in h.get_routes(family=socket.AF_INET, table=254) if x["dst_len"] == 0]
        if [(netlink.attr(x, "RTA_GATEWAY"), netlink.attr(x, "RTA_OIF")) for x in default] != [(gw, inner)]:
            h.route("replace", dst="0.0.0.0/0", gateway=gw, oif=inner)
            changes.append(f"default route via {gw} dev {UPLINK_INNER}")
    if sysctls_sync(s.uplink_netns or None, {IP_FORWARD: "1"}):
        log.warning("egress: enabled IPv4 forwarding in %s (net.ipv4.ip_forward=1); left on by down", where)
    return created, [] if created else changes


def remove_uplink_sync(s: Settings) -> list[str]:
    """Delete the uplink pair if it is ours; a foreign link with the same name is left alone."""
    if s.uplink_netns and not netlink.netns_exists(s.uplink_netns):
        return []  # the outer namespace is gone, and the veth pair with it
    have_ns = netlink.netns_exists(s.fabric_netns)
    with netlink.at(s.uplink_netns or None, Hop.NAT) as r:
        if not have_ns:
            return []  # the pair lives and dies with the fabric namespace: an outer link of that name is not ours
        with netlink.ns(s.fabric_netns, Hop.NAT) as h:
            outer, inner, paired = _uplink_ends(r, h, s)
            if paired and outer is not None:
                netlink.delete_link(r, uplink_outer(s.fabric_netns))
                return [f"uplink {uplink_outer(s.fabric_netns)}/{UPLINK_INNER} removed"]
            if inner is not None:
                netlink.delete_link(h, UPLINK_INNER)
                return [f"stray {UPLINK_INNER} removed"]
    return []


def delete_links_sync(netns: str, names: list[str]) -> None:
    if netlink.netns_exists(netns):
        with netlink.ns(netns, Hop.BRIDGE) as h:
            for name in names:
                netlink.delete_link(h, name)


def observe_sync(s: Settings) -> dict[str, Any]:
    """Everything netlink and /proc/sys say about the fabric (read-only)."""
    seen: dict[str, Any] = {}
    gone = bool(s.uplink_netns) and not netlink.netns_exists(str(s.uplink_netns))
    seen["uplink_netns_missing"] = gone
    with netlink.at(None if gone else s.uplink_netns or None, Hop.FABRIC) as r:
        outer_name = uplink_outer(s.fabric_netns)
        if not netlink.netns_exists(s.fabric_netns):
            seen["uplink_conflict"] = s.egress and not gone and netlink.link_index(r, outer_name) is not None
            return seen
        seen["netns_exists"] = True
        with netlink.ns(s.fabric_netns, Hop.FABRIC) as h:
            idx = netlink.link_index(h, s.bridge_device)
            if idx is not None:
                seen["bridge_kind"] = netlink.link_kind(h, idx)
                seen["bridge_exists"] = seen["bridge_kind"] == "bridge"
                seen["bridge_up"] = _is_up(h, idx)
                seen["bridge_addresses"] = netlink.ipv4_addresses(h, idx)
            seen["ports"] = _ports(h)
            if not gone:  # else the handle is the host's: the pair died with the outer namespace
                outer, _inner, paired = _uplink_ends(r, h, s)
                seen["uplink"] = paired
                seen["uplink_conflict"] = outer is not None and not paired
    seen["forwarding"] = call_in_netns(s.fabric_netns, lambda: Path("/proc/sys", IP_FORWARD).read_text().strip())
    seen["forwarding"] = seen["forwarding"] == "1"
    return seen


def list_ports_sync(netns: str) -> list[PortStatus]:
    with netlink.ns(netns, Hop.FABRIC) as h:
        return _ports(h)
