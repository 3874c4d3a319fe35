"""Bridge ports: the veth pair of a namespace sandbox and the TAP of a VM sandbox.

Every port is a member of the fabric bridge with `isolated` set, so sandboxes cannot reach each other at L2.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import os
import struct

from pyroute2 import NetlinkError

from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric import netlink
from hearth.fabric.dial import call_in_netns
from hearth.fabric.reaper import reaper
from hearth.fabric.slot import Slot, link_index, slot_for

GUEST_IFNAME = "eth0"
NUD_PERMANENT = 0x80


def _bridge_port(handle: object, settings: Settings, ifname: str, slot: Slot) -> None:
    """Attach, isolate, and pin the slot's neighbour entry (address → MAC, permanent: no ARP reply can move it)."""
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
    handle.neigh(  # type: ignore[attr-defined]
        "replace", dst=str(slot.ip), lladdr=slot.mac, ifindex=br, state=NUD_PERMANENT
    )


def _unpin(handle: object, settings: Settings, ifname: str) -> None:
    """Remove the permanent neighbour entry of the slot a port belongs to (already gone is success)."""
    parsed = link_index(ifname)
    br = netlink.link_index(handle, settings.bridge_device)
    if parsed is None or br is None:
        return
    s = settings
    slot = slot_for(s.fabric_netns, s.internal_network, s.bridge_ip, s.ip_pool_start, parsed[1])
    try:
        handle.neigh("del", dst=str(slot.ip), ifindex=br)  # type: ignore[attr-defined]
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise


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
        _bridge_port(fab, settings, slot.veth_host, slot)
    with netlink.ns(slot.netns, Hop.LINK) as sb:
        lo = netlink.link_index(sb, "lo")
        sb.link("set", index=lo, state="up")
        eth = netlink.link_index(sb, GUEST_IFNAME)
        if eth is None:
            raise FabricError(Hop.LINK, f"{GUEST_IFNAME} did not appear in {slot.netns}", "see `hearth doctor`")
        sb.addr("add", index=eth, address=str(slot.ip), prefixlen=slot.prefixlen)
        sb.link("set", index=eth, state="up")
        sb.route("add", dst="0.0.0.0/0", gateway=str(slot.gateway))


TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def _create_tap(name: str) -> None:
    """A persistent TAP device (vnet_hdr, as virtio-net wants), created by ioctl in the calling thread's namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def add_tap_sync(settings: Settings, slot: Slot) -> None:
    """Create the VM's TAP in the fabric namespace and put it on the bridge.

    TUN/TAP devices are created by ioctl (not netlink), in the namespace of the calling thread: so the ioctl runs on
    a thread that joined the fabric namespace — never in the host's root namespace.
    """
    with netlink.ns(settings.fabric_netns, Hop.LINK) as fab:
        netlink.delete_link(fab, slot.tap_name)
    try:
        call_in_netns(settings.fabric_netns, lambda: _create_tap(slot.tap_name))
    except OSError as exc:
        raise FabricError(
            Hop.LINK, f"cannot create TAP {slot.tap_name}: {exc}", "load the tun module (modprobe tun) and run as root"
        ) from exc
    with netlink.ns(settings.fabric_netns, Hop.LINK) as fab:
        _bridge_port(fab, settings, slot.tap_name, slot)


def remove_port_sync(settings: Settings, ifname: str) -> None:
    """Delete a port of the fabric; already gone (or no fabric at all) is success."""
    if not netlink.netns_exists(settings.fabric_netns):
        return
    with netlink.ns(settings.fabric_netns, Hop.LINK) as fab:
        netlink.delete_link(fab, ifname)
        _unpin(fab, settings, ifname)


async def add_veth(settings: Settings, slot: Slot) -> None:
    await asyncio.to_thread(add_veth_sync, settings, slot)


async def add_tap(settings: Settings, slot: Slot) -> None:
    await asyncio.to_thread(add_tap_sync, settings, slot)


async def remove_port(settings: Settings, ifname: str) -> None:
    """Delete a port of the fabric, in a batch with the others removed at the same time (hearth/fabric/reaper.py);
    already gone (or no fabric at all) is success."""
    await reaper(settings, functools.partial(_unpin_port, settings))(ifname)


def _unpin_port(settings: Settings, handle: object, ifname: str) -> None:
    _unpin(handle, settings, ifname)
