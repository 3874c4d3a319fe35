"""Bridge ports: the veth pair of a namespace sandbox and the TAP of a VM sandbox.

Every port is a member of the fabric bridge with `isolated` set, so sandboxes cannot reach each other at L2.
"""

from __future__ import annotations

import asyncio

from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric import netlink
from hearth.fabric.slot import Slot

GUEST_IFNAME = "eth0"


def _bridge_port(handle: object, settings: Settings, ifname: str) -> None:
    br = netlink.link_index(handle, settings.bridge_device)
    if br is None:
        raise FabricError(
            Hop.BRIDGE,
            f"bridge {settings.bridge_device} missing in {settings.fabric_netns}",
            "run `hearth fabric up`",
        )
    idx = netlink.link_index(handle, ifname)
    assert idx is not None
    handle.link("set", index=idx, master=br, state="up")  # type: ignore[attr-defined]
    handle.brport("set", index=idx, isolated=1)  # type: ignore[attr-defined]


def add_veth_sync(settings: Settings, slot: Slot) -> None:
    """Create the sandbox namespace's veth: outer end on the bridge, inner end `eth0` with the slot address."""
    with netlink.ns(settings.fabric_netns, Hop.LINK) as fab:
        netlink.delete_link(fab, slot.veth_host)  # a stale port of this slot (crash) is ours to replace
        fab.link(
            "add",
            ifname=slot.veth_host,
            kind="veth",
            peer={"ifname": GUEST_IFNAME, "net_ns_fd": slot.netns, "address": slot.mac},
        )
        _bridge_port(fab, settings, slot.veth_host)
    with netlink.ns(slot.netns, Hop.LINK) as sb:
        lo = netlink.link_index(sb, "lo")
        sb.link("set", index=lo, state="up")
        eth = netlink.link_index(sb, GUEST_IFNAME)
        if eth is None:
            raise FabricError(Hop.LINK, f"{GUEST_IFNAME} did not appear in {slot.netns}", "see `hearth doctor`")
        sb.addr("add", index=eth, address=str(slot.ip), prefixlen=slot.prefixlen)
        sb.link("set", index=eth, state="up")
        sb.route("add", dst="0.0.0.0/0", gateway=str(slot.gateway))


def add_tap_sync(settings: Settings, slot: Slot) -> None:
    """Create the VM's TAP in the fabric namespace (vnet_hdr on, as virtio-net wants) and put it on the bridge."""
    with netlink.ns(settings.fabric_netns, Hop.LINK) as fab:
        netlink.delete_link(fab, slot.tap_name)
        fab.link("add", ifname=slot.tap_name, kind="tuntap", mode="tap", vnet_hdr=True)
        _bridge_port(fab, settings, slot.tap_name)


def remove_port_sync(settings: Settings, ifname: str) -> None:
    """Delete a port of the fabric; already gone (or no fabric at all) is success."""
    if not netlink.netns_exists(settings.fabric_netns):
        return
    with netlink.ns(settings.fabric_netns, Hop.LINK) as fab:
        netlink.delete_link(fab, ifname)


async def add_veth(settings: Settings, slot: Slot) -> None:
    await asyncio.to_thread(add_veth_sync, settings, slot)


async def add_tap(settings: Settings, slot: Slot) -> None:
    await asyncio.to_thread(add_tap_sync, settings, slot)


async def remove_port(settings: Settings, ifname: str) -> None:
    await asyncio.to_thread(remove_port_sync, settings, ifname)
