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
explicitly (links.BRIDGE_MAC) so it never changes when ports come and go.

Egress (HEARTH_EGRESS, off by default) also sets net.ipv4.ip_forward=1 in the host namespace when it is off, with a
warning; hearth never turns it back off (other software on the host may rely on it by then).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric import links, netlink, nft, nftrun
from hearth.fabric.base import FabricStatus, diagnose
from hearth.fabric.slot import UPLINK_INNER, outer_where, uplink_outer

log = logging.getLogger("hearth.fabric")
T = TypeVar("T")


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
        current = await nftrun.list_table(netns, t["family"], t["name"], hop=hop)
        if current is not None and nft.normalize(current) == nft.normalize(objects):
            return None
        await nftrun.apply(netns, nft.replace_table(objects), hop=hop)
        return "created" if current is None else "replaced"

    async def _drop_table(self, netns: str | None, family: str, name: str, hop: Hop) -> bool:
        if netns is not None and not netlink.netns_exists(netns):
            return False
        if not await nftrun.table_exists(netns, family, name, hop=hop):
            return False
        await nftrun.apply(netns, nft.delete_table(family, name), hop=hop)
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
        created, changes = await self._thread(Hop.BRIDGE, "bridge", links.bridge_sync, s)
        if created:
            self._undo(
                undo, f"delete bridge {br}", lambda: self._thread(Hop.BRIDGE, "rm", links.delete_links_sync, ns, [br])
            )
        _report(changes, fresh)
        _report(await self._thread(Hop.FORWARDING, "sysctls", links.sysctls_sync, ns, links.fabric_sysctls(br)), fresh)
        if s.egress:
            created, changes = await self._thread(Hop.NAT, "uplink", links.uplink_sync, s)
            if created:
                changes.append(f"created uplink {uplink_outer(ns)}/{UPLINK_INNER}")
                self._undo(undo, "delete uplink", lambda: self._thread(Hop.NAT, "rm", links.remove_uplink_sync, s))
            _report(changes, fresh)
        else:
            _report(await self._thread(Hop.NAT, "uplink removal", links.remove_uplink_sync, s), fresh)
            if await self._drop_table(outer_ns, nft.ROOT_FAMILY, host_table, Hop.NAT):
                _report([f"uplink table ip {host_table} in {outer_where(outer_ns)} removed (egress is off)"], False)

    # ---- down ---------------------------------------------------------------------------------------------
    async def down(self, *, force: bool = False) -> None:
        s, ns = self.s, self.s.fabric_netns
        ports: list[str] = []
        if netlink.netns_exists(ns):
            ports = [p.name for p in await self._thread(Hop.FABRIC, "list ports", links.list_ports_sync, ns)]
            if ports and not force:
                raise FabricError(
                    Hop.FABRIC,
                    f"{len(ports)} sandbox port(s) still attached to fabric {ns}: {', '.join(ports[:8])}",
                    "end those sessions first, or `hearth fabric down --force`",
                )
        removed = await self._thread(Hop.NAT, "uplink removal", links.remove_uplink_sync, s)
        if await self._drop_table(s.uplink_netns or None, nft.ROOT_FAMILY, nft.root_table(ns), Hop.NAT):
            removed.append(f"uplink table ip {nft.root_table(ns)} in {outer_where(s.uplink_netns)} removed")
        if netlink.netns_exists(ns):
            # Explicitly, so a namespace kept alive by a stray reference after the unmount is disarmed too.
            if await self._drop_table(ns, nft.FABRIC_FAMILY, nft.FABRIC_TABLE, Hop.FORWARDING):
                removed.append("table inet hearth removed")
            if await self._drop_table(ns, nft.L2_FAMILY, nft.FABRIC_TABLE, Hop.ARP):
                removed.append("table bridge hearth removed")
            await self._thread(Hop.BRIDGE, "delete links", links.delete_links_sync, ns, [*ports, s.bridge_device])
            await self._thread(Hop.FABRIC, f"remove namespace {ns}", netlink.remove_netns, ns)
            removed.append(f"namespace {ns} removed (bridge {s.bridge_device}, {len(ports)} port(s))")
        for what in removed:
            log.info("fabric down: %s", what)

    # ---- status -------------------------------------------------------------------------------------------
    async def status(self) -> FabricStatus:
        s, ns = self.s, self.s.fabric_netns
        seen = await self._thread(Hop.FABRIC, "observe", links.observe_sync, s)
        st = FabricStatus(netns=ns, bridge=s.bridge_device, egress=bool(s.egress), **seen)
        unreadable: list[str] = []
        outer_ns = s.uplink_netns or None
        try:
            host = outer_ns is None or netlink.netns_exists(outer_ns)
            host = host and await nftrun.table_exists(outer_ns, nft.ROOT_FAMILY, nft.root_table(ns), hop=Hop.NAT)
            items = await nftrun.list_table(ns, nft.FABRIC_FAMILY, nft.FABRIC_TABLE) if st.netns_exists else None
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
