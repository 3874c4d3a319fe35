"""The fabric: its own network namespace with a bridge at BRIDGE_IP, forwarding, nftables, optional egress uplink.

`up()` converges to the state computed from the settings: it creates what is missing, repairs drift (a bridge
re-addressed, a port detached or not isolated, a ruleset edited by hand — each repair is logged as a warning), and
registers an undo for everything it creates, so a failure halfway leaves nothing of that attempt behind.

Sysctls of the fabric namespace (and why):
  net.ipv4.ip_forward=1              sandboxes reach the uplink (egress) through the fabric
  net.ipv4.conf.all/default.rp_filter=1  strict: the topology is symmetric (bridge ↔ INTERNAL_NETWORK, default route
                                     ↔ uplink), so strict reverse-path filtering only drops spoofed sources
  net.ipv4.conf.{all,default,BRIDGE}.send_redirects=0  the fabric never tells one sandbox to talk to another directly
  net.ipv4.conf.BRIDGE.proxy_arp_pvlan=1, net.ipv4.neigh.BRIDGE.proxy_delay=0  a sandbox's packet to another
                                     sandbox reaches the fabric's forward chain (dropped there, counted `fabric`)
Layer 2 is pinned: table `bridge hearth` (nft.l2_ruleset) lets each port send only from its slot's MAC and address
(ARP and IPv4), ports.py makes the neighbour entry of every attached slot permanent, and the bridge's MAC is set
explicitly (BRIDGE_MAC) so it never changes when ports come and go.

Egress (HEARTH_EGRESS, off by default) also sets net.ipv4.ip_forward=1 in the host namespace when it is off, with a
warning; hearth never turns it back off (other software on the host may rely on it by then).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric import netlink, nft
from hearth.fabric.base import FabricStatus, PortStatus, diagnose
from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import UPLINK_INNER, link_index, outer_where, uplink_outer

log = logging.getLogger("hearth.fabric")
T = TypeVar("T")
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


def _bridge_sync(s: Settings) -> tuple[bool, list[str]]:
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


def _sysctls_sync(netns: str | None, wanted: dict[str, str]) -> list[str]:
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


def _uplink_sync(s: Settings) -> tuple[bool, list[str]]:
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
    if _sysctls_sync(s.uplink_netns or None, {IP_FORWARD: "1"}):
        log.warning("egress: enabled IPv4 forwarding in %s (net.ipv4.ip_forward=1); left on by down", where)
    return created, [] if created else changes


def _remove_uplink_sync(s: Settings) -> list[str]:
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


def _delete_links_sync(netns: str, names: list[str]) -> None:
    if netlink.netns_exists(netns):
        with netlink.ns(netns, Hop.BRIDGE) as h:
            for name in names:
                netlink.delete_link(h, name)


def _observe_sync(s: Settings) -> dict[str, Any]:
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


class Fabric:
    """The fabric of one hearth instance, from its settings. Blocking work runs on threads, each with a timeout."""

    def __init__(self, settings: Settings, *, timeout: float = 20.0) -> None:
        self.s = settings
        self.timeout = timeout

    async def _thread(self, hop: Hop, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.timeout)
        except TimeoutError:
            raise FabricError(hop, f"{what} did not finish within {self.timeout:g}s", "check dmesg") from None
        except OSError as exc:
            raise FabricError(hop, f"{what} failed: {exc}", "run as root (CAP_NET_ADMIN and CAP_SYS_ADMIN)") from exc

    async def _converge_table(self, netns: str | None, objects: list[nft.Obj], hop: Hop) -> str | None:
        """Replace the table when it is missing or differs from `objects`; what was done, or None."""
        t = objects[0]["table"]
        current = await nft.list_table(netns, t["family"], t["name"], hop=hop)
        if current is not None and nft.normalize(current) == nft.normalize(objects):
            return None
        await nft.apply(netns, nft.replace_table(objects), hop=hop)
        return "created" if current is None else "replaced"

    async def _drop_table(self, netns: str | None, family: str, name: str, hop: Hop) -> bool:
        if netns is not None and not netlink.netns_exists(netns):
            return False
        if not await nft.table_exists(netns, family, name, hop=hop):
            return False
        await nft.apply(netns, nft.delete_table(family, name), hop=hop)
        return True

    @staticmethod
    def _undo(stack: AsyncExitStack, what: str, step: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            try:
                await step()
                log.info("fabric rollback: %s", what)
            except Exception:  # keep unwinding; the original error is what the caller must see
                log.exception("fabric rollback: %s failed", what)

        stack.push_async_callback(run)

    # ---- up -----------------------------------------------------------------------------------------------
    async def up(self) -> None:
        try:
            async with AsyncExitStack() as undo:
                await self._up(undo)
                undo.pop_all()
        except BaseException as exc:
            log.error("fabric up failed (%s); rolled back what this attempt created", exc)
            raise

    async def _up(self, undo: AsyncExitStack) -> None:
        """Namespace, then the rules (before anything could forward), then links, sysctls and the uplink."""
        s, ns, br = self.s, self.s.fabric_netns, self.s.bridge_device
        host_table = nft.root_table(ns)
        fresh = await self._thread(Hop.FABRIC, f"create namespace {ns}", netlink.create_netns, ns)
        if fresh:
            log.info("fabric: created namespace %s", ns)
            self._undo(undo, f"remove namespace {ns}", lambda: self._thread(Hop.FABRIC, "rm", netlink.remove_netns, ns))
        done = await self._converge_table(ns, nft.fabric_ruleset(s), Hop.FORWARDING)
        if done == "created":
            self._undo(undo, "delete table inet hearth", lambda: self._drop_table(ns, "inet", "hearth", Hop.FORWARDING))
        _report([f"nftables table inet hearth {done}"] if done else [], fresh)
        done = await self._converge_table(ns, nft.l2_ruleset(s), Hop.ARP)
        if done == "created":
            self._undo(undo, "delete table bridge hearth", lambda: self._drop_table(ns, "bridge", "hearth", Hop.ARP))
        _report([f"nftables table bridge hearth {done}"] if done else [], fresh)
        outer_ns = s.uplink_netns or None
        if s.egress:
            if outer_ns is not None and not netlink.netns_exists(outer_ns):
                raise FabricError(
                    Hop.NAT,
                    f"network namespace {outer_ns} (HEARTH_UPLINK_NETNS) does not exist",
                    f"create it (ip netns add {outer_ns}) and connect it to the outside, or unset HEARTH_UPLINK_NETNS",
                )
            done = await self._converge_table(outer_ns, nft.root_ruleset(s), Hop.NAT)
            if done == "created":
                self._undo(
                    undo,
                    f"delete table ip {host_table}",
                    lambda: self._drop_table(outer_ns, "ip", host_table, Hop.NAT),
                )
            _report([f"uplink table ip {host_table} in {outer_where(outer_ns)} {done}"] if done else [], fresh)
        created, changes = await self._thread(Hop.BRIDGE, "bridge", _bridge_sync, s)
        if created:
            self._undo(
                undo, f"delete bridge {br}", lambda: self._thread(Hop.BRIDGE, "rm", _delete_links_sync, ns, [br])
            )
        _report(changes, fresh)
        _report(await self._thread(Hop.FORWARDING, "sysctls", _sysctls_sync, ns, fabric_sysctls(br)), fresh)
        if s.egress:
            created, changes = await self._thread(Hop.NAT, "uplink", _uplink_sync, s)
            if created:
                changes.append(f"created uplink {uplink_outer(ns)}/{UPLINK_INNER}")
                self._undo(undo, "delete uplink", lambda: self._thread(Hop.NAT, "rm", _remove_uplink_sync, s))
            _report(changes, fresh)
        else:
            _report(await self._thread(Hop.NAT, "uplink removal", _remove_uplink_sync, s), fresh)
            if await self._drop_table(outer_ns, nft.ROOT_FAMILY, host_table, Hop.NAT):
                _report([f"uplink table ip {host_table} in {outer_where(outer_ns)} removed (egress is off)"], False)

    # ---- down ---------------------------------------------------------------------------------------------
    async def down(self, *, force: bool = False) -> None:
        s, ns = self.s, self.s.fabric_netns
        ports: list[str] = []
        if netlink.netns_exists(ns):
            ports = [p.name for p in await self._thread(Hop.FABRIC, "list ports", _list_ports_sync, ns)]
            if ports and not force:
                raise FabricError(
                    Hop.FABRIC,
                    f"{len(ports)} sandbox port(s) still attached to fabric {ns}: {', '.join(ports[:8])}",
                    "end those sessions first, or `hearth fabric down --force`",
                )
        removed = await self._thread(Hop.NAT, "uplink removal", _remove_uplink_sync, s)
        if await self._drop_table(s.uplink_netns or None, nft.ROOT_FAMILY, nft.root_table(ns), Hop.NAT):
            removed.append(f"uplink table ip {nft.root_table(ns)} in {outer_where(s.uplink_netns)} removed")
        if netlink.netns_exists(ns):
            # Explicitly, so a namespace kept alive by a stray reference after the unmount is disarmed too.
            if await self._drop_table(ns, nft.FABRIC_FAMILY, nft.FABRIC_TABLE, Hop.FORWARDING):
                removed.append("table inet hearth removed")
            if await self._drop_table(ns, nft.L2_FAMILY, nft.FABRIC_TABLE, Hop.ARP):
                removed.append("table bridge hearth removed")
            await self._thread(Hop.BRIDGE, "delete links", _delete_links_sync, ns, [*ports, s.bridge_device])
            await self._thread(Hop.FABRIC, f"remove namespace {ns}", netlink.remove_netns, ns)
            removed.append(f"namespace {ns} removed (bridge {s.bridge_device}, {len(ports)} port(s))")
        for what in removed:
            log.info("fabric down: %s", what)

    # ---- status -------------------------------------------------------------------------------------------
    async def status(self) -> FabricStatus:
        s, ns = self.s, self.s.fabric_netns
        seen = await self._thread(Hop.FABRIC, "observe", _observe_sync, s)
        st = FabricStatus(netns=ns, bridge=s.bridge_device, egress=bool(s.egress), **seen)
        unreadable: list[str] = []
        outer_ns = s.uplink_netns or None
        try:
            host = outer_ns is None or netlink.netns_exists(outer_ns)
            host = host and await nft.table_exists(outer_ns, nft.ROOT_FAMILY, nft.root_table(ns), hop=Hop.NAT)
            items = await nft.list_table(ns, nft.FABRIC_FAMILY, nft.FABRIC_TABLE) if st.netns_exists else None
        except FabricError as exc:  # e.g. nft missing, or the namespace vanished meanwhile
            host, items = False, None
            unreadable.append(exc.reason)
        st = dataclasses.replace(
            st,
            root_nat=host,
            nft_table=items is not None,
            nft_in_sync=items is not None and nft.normalize(items) == nft.normalize(nft.fabric_ruleset(s)),
            isolation_rule=items is not None and nft.has_isolation(items, s.bridge_device),
            masquerade=items is not None and nft.has_masquerade(items),
        )
        return dataclasses.replace(st, problems=unreadable + diagnose(s, st))


def _report(changes: list[str], fresh: bool) -> None:
    """Changes to a namespace this attempt created are set-up (info); to an existing one, drift repairs (warning)."""
    for change in changes:
        if fresh:
            log.info("fabric: %s", change)
        else:
            log.warning("fabric changed to match the settings (drift or new settings): %s", change)


def _list_ports_sync(netns: str) -> list[PortStatus]:
    with netlink.ns(netns, Hop.FABRIC) as h:
        return _ports(h)
