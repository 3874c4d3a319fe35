"""The fabric in its own network namespace: bridge with BRIDGE_IP, forwarding, nftables, optional egress uplink.

`up()` computes the desired state and converges to it (creating, repairing drift such as a bridge re-addressed to
another subnet), registering an undo for everything it creates so a failure halfway leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.errors import FabricError, HearthError, Hop
from hearth.fabric import netlink, nft
from hearth.fabric.base import FabricBackend, FabricStatus
from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import UPLINK_INNER, link_index, uplink_outer

log = logging.getLogger("hearth.fabric")


def _sysctl(path: str, value: str | None = None) -> str:
    """Read (and optionally write) a /proc/sys entry of the calling thread's namespace.

    /proc/sys/net entries resolve to the network namespace of the thread that opens them.
    """
    p = Path("/proc/sys") / path
    if value is not None:
        p.write_text(value)
    return p.read_text().strip()


class Fabric(FabricBackend):
    def __init__(self, settings: Settings) -> None:
        self.s = settings

    # ---- up -------------------------------------------------------------------------------------
    async def up(self) -> None:
        s = self.s
        async with AsyncExitStack() as undo:
            if await asyncio.to_thread(netlink.create_netns, s.fabric_netns):
                undo.push_async_callback(asyncio.to_thread, netlink.remove_netns, s.fabric_netns)
                log.info("created fabric namespace", extra={"netns": s.fabric_netns})
            created_bridge = await asyncio.to_thread(self._bridge_sync)
            if created_bridge:
                undo.push_async_callback(asyncio.to_thread, self._delete_link_sync, s.bridge_device)
            await asyncio.to_thread(self._forwarding_sync)
            if s.egress:
                if await asyncio.to_thread(self._uplink_sync):
                    undo.push_async_callback(self._remove_uplink)
            else:
                await self._remove_uplink()
            exists = await nft.list_table(s.fabric_netns) is not None
            await nft.nft(s.fabric_netns, nft.ruleset(s, exists))
            if s.egress:
                table = self._root_table
                root_exists = await nft.list_table(None, "ip", table) is not None
                await nft.nft(None, nft.root_ruleset(s, table, uplink_outer(s.fabric_netns), root_exists))
            undo.pop_all()

    @property
    def _root_table(self) -> str:
        return f"hearth_{self.s.fabric_netns}".replace("-", "_")

    def _bridge_sync(self) -> bool:
        s = self.s
        want = f"{s.bridge_ip}/{s.prefixlen}"
        created = False
        with netlink.ns(s.fabric_netns, Hop.BRIDGE) as h:
            lo = netlink.link_index(h, "lo")
            h.link("set", index=lo, state="up")
            idx = netlink.link_index(h, s.bridge_device)
            if idx is None:
                h.link("add", ifname=s.bridge_device, kind="bridge")
                idx = netlink.link_index(h, s.bridge_device)
                created = True
            else:
                kind = netlink.attr(netlink.attr(h.get_links(idx)[0], "IFLA_LINKINFO") or {}, "IFLA_INFO_KIND")
                if kind != "bridge":
                    raise FabricError(
                        Hop.BRIDGE,
                        f"{s.bridge_device} exists in {s.fabric_netns} but is a {kind}, not a bridge",
                        "delete it or choose another BRIDGE_DEVICE",
                    )
            present = [f"{netlink.attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}" for a in h.get_addr(index=idx, family=2)]
            for addr in present:
                if addr != want:
                    ip, _, plen = addr.partition("/")
                    log.warning("repairing bridge address", extra={"found": addr, "want": want})
                    h.addr("del", index=idx, address=ip, prefixlen=int(plen))
            if want not in present:
                h.addr("add", index=idx, address=str(s.bridge_ip), prefixlen=s.prefixlen)
            h.link("set", index=idx, state="up")
        return created

    def _forwarding_sync(self) -> None:
        def write() -> None:
            _sysctl("net/ipv4/ip_forward", "1")
            # Strict reverse-path filtering drops replies on asymmetric paths (a seed failure mode): loose.
            _sysctl("net/ipv4/conf/all/rp_filter", "2")

        call_in_netns(self.s.fabric_netns, write)

    def _uplink_sync(self) -> bool:
        s = self.s
        outer, inner = uplink_outer(s.fabric_netns), UPLINK_INNER
        hosts = list(s.uplink_network.hosts())
        created = False
        from pyroute2 import IPRoute

        with IPRoute() as root:
            if not root.link_lookup(ifname=outer):
                root.link("add", ifname=outer, kind="veth", peer={"ifname": inner, "net_ns_fd": s.fabric_netns})
                created = True
            o = root.link_lookup(ifname=outer)[0]
            if not any(netlink.attr(a, "IFA_ADDRESS") == str(hosts[0]) for a in root.get_addr(index=o)):
                root.addr("add", index=o, address=str(hosts[0]), prefixlen=30)
            root.link("set", index=o, state="up")
        with netlink.ns(s.fabric_netns, Hop.NAT) as h:
            i = netlink.link_index(h, inner)
            if i is None:
                raise FabricError(Hop.NAT, f"uplink end {inner} missing in {s.fabric_netns}", "run `hearth fabric up`")
            if not any(netlink.attr(a, "IFA_ADDRESS") == str(hosts[1]) for a in h.get_addr(index=i)):
                h.addr("add", index=i, address=str(hosts[1]), prefixlen=30)
            h.link("set", index=i, state="up")
            with contextlib.suppress(Exception):
                h.route("del", dst="0.0.0.0/0")
            h.route("add", dst="0.0.0.0/0", gateway=str(hosts[0]))
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:  # root namespace: egress needs forwarding there
            f.write("1")
        return created

    async def _remove_uplink(self) -> None:
        def remove() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as root:
                for idx in root.link_lookup(ifname=uplink_outer(self.s.fabric_netns)):
                    root.link("del", index=idx)

        await asyncio.to_thread(remove)
        if await nft.list_table(None, "ip", self._root_table) is not None:
            await nft.nft(None, {"nftables": [{"delete": {"table": {"family": "ip", "name": self._root_table}}}]})

    def _delete_link_sync(self, name: str) -> None:
        if netlink.netns_exists(self.s.fabric_netns):
            with netlink.ns(self.s.fabric_netns) as h:
                netlink.delete_link(h, name)

    # ---- down -----------------------------------------------------------------------------------
    async def down(self, force: bool = False) -> None:
        s = self.s
        if not netlink.netns_exists(s.fabric_netns):
            await self._remove_uplink()
            return
        ports = [p["name"] for p in await asyncio.to_thread(self._ports_sync)]
        if ports and not force:
            raise FabricError(
                Hop.FABRIC,
                f"{len(ports)} sandbox ports still attached ({', '.join(ports[:5])})",
                "cancel the sessions first, or `hearth fabric down --force`",
            )
        await self._remove_uplink()
        await asyncio.to_thread(netlink.remove_netns, s.fabric_netns)

    # ---- status ---------------------------------------------------------------------------------
    def _ports_sync(self) -> list[dict[str, Any]]:
        out = []
        with netlink.ns(self.s.fabric_netns) as h:
            br = netlink.link_index(h, self.s.bridge_device)
            for link in h.get_links():
                name = str(netlink.attr(link, "IFLA_IFNAME"))
                if link_index(name) is None:
                    continue
                out.append(
                    {
                        "name": name,
                        "on_bridge": br is not None and netlink.attr(link, "IFLA_MASTER") == br,
                        "state": str(netlink.attr(link, "IFLA_OPERSTATE")).lower(),
                    }
                )
        return out

    async def status(self) -> FabricStatus:
        s = self.s
        problems: list[str] = []
        if not netlink.netns_exists(s.fabric_netns):
            return FabricStatus(
                s.fabric_netns, problems=[f"fabric namespace {s.fabric_netns} missing: run `hearth fabric up`"]
            )

        def links() -> tuple[bool, bool, list[str]]:
            with netlink.ns(s.fabric_netns) as h:
                idx = netlink.link_index(h, s.bridge_device)
                if idx is None:
                    return False, False, []
                link = h.get_links(idx)[0]
                up = bool(link["flags"] & 1)
                addrs = [f"{netlink.attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}" for a in h.get_addr(index=idx, family=2)]
                return True, up, addrs

        exists, up, addrs = await asyncio.to_thread(links)
        want = f"{s.bridge_ip}/{s.prefixlen}"
        if not exists:
            problems.append(f"bridge {s.bridge_device} missing in {s.fabric_netns}: run `hearth fabric up`")
        else:
            if not up:
                problems.append(f"bridge {s.bridge_device} is down: run `hearth fabric up`")
            if want not in addrs:
                problems.append(f"bridge carries {addrs or 'no address'}, expected {want}: run `hearth fabric up`")
        forwarding = (
            await asyncio.to_thread(call_in_netns, s.fabric_netns, lambda: _sysctl("net/ipv4/ip_forward")) == "1"
        )
        if not forwarding:
            problems.append("IPv4 forwarding is off in the fabric namespace: run `hearth fabric up`")
        try:
            items = await nft.list_table(s.fabric_netns)
        except HearthError as exc:
            items = None
            problems.append(exc.reason)
        masq = items is not None and nft.has_masquerade(items)
        if items is None:
            problems.append("nftables table inet hearth missing in the fabric: run `hearth fabric up`")
        if s.egress and not masq:
            problems.append(f"egress is on but no masquerade for {s.internal_network}: run `hearth fabric up`")
        uplink = False
        if s.egress:

            def has_uplink() -> bool:
                with netlink.ns(s.fabric_netns) as h:
                    return netlink.link_index(h, UPLINK_INNER) is not None

            uplink = await asyncio.to_thread(has_uplink)
            if not uplink:
                problems.append("egress is on but the uplink veth is missing: run `hearth fabric up`")
        ports = await asyncio.to_thread(self._ports_sync)
        return FabricStatus(
            s.fabric_netns,
            True,
            exists,
            up,
            addrs,
            forwarding,
            items is not None,
            masq,
            s.egress,
            uplink,
            ports,
            problems,
        )
