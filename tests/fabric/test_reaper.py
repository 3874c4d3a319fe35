"""Fabric ports removed together go in batches (hearth/fabric/reaper.py): every port asked for is gone with its
pinned neighbour entry, nothing else is touched, a port already gone is success, and ports asked for while a batch
runs are removed together in the next one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from hearth.config import Settings
from hearth.errors import FabricError
from hearth.fabric import netlink, ports
from hearth.fabric.dial import call_in_netns
from hearth.fabric.fabric import Fabric
from hearth.fabric.reaper import GROUP, reaper
from hearth.fabric.slot import slot_for

Make = Callable[..., Settings]
pytestmark = pytest.mark.netns


def _links(netns: str) -> dict[str, int]:
    """Name → link group of every link in `netns`."""

    def read() -> dict[str, int]:
        with netlink.ns(netns) as h:
            return {str(netlink.attr(m, "IFLA_IFNAME")): int(netlink.attr(m, "IFLA_GROUP")) for m in h.get_links()}

    return call_in_netns(None, read)


def _pinned(s: Settings) -> set[str]:
    """The addresses with a permanent neighbour entry on the fabric's bridge."""

    def read() -> set[str]:
        with netlink.ns(s.fabric_netns) as h:
            br = netlink.link_index(h, s.bridge_device)
            return {
                str(netlink.attr(n, "NDA_DST"))
                for n in h.get_neighbours(ifindex=br)
                if n["state"] & ports.NUD_PERMANENT
            }

    return call_in_netns(None, read)


async def test_ports_removed_together_go_in_batches_and_nothing_else_goes(fabric_settings: Make) -> None:
    s = fabric_settings()
    await Fabric(s).up()
    slots = [slot_for(s.fabric_netns, s.internal_network, s.bridge_ip, s.ip_pool_start, i) for i in range(12)]
    try:
        for slot in slots:
            netlink.create_netns(slot.netns)
            await ports.add_veth(s, slot)
        before = await asyncio.to_thread(_links, s.fabric_netns)
        assert {slot.veth_host for slot in slots} <= set(before)
        assert {str(slot.ip) for slot in slots} <= await asyncio.to_thread(_pinned, s)
        gone, kept = slots[:10], slots[10:]
        # ten at once, one of them twice, and one port that never existed: all succeed
        await asyncio.gather(
            *(ports.remove_port(s, slot.veth_host) for slot in gone),
            ports.remove_port(s, gone[0].veth_host),
            ports.remove_port(s, "hearth-v999"),
        )
        after = await asyncio.to_thread(_links, s.fabric_netns)
        assert not {slot.veth_host for slot in gone} & set(after)
        assert {slot.veth_host for slot in kept} <= set(after)  # not asked for: untouched
        assert GROUP not in after.values()  # no port left behind in the batch's group
        pinned = await asyncio.to_thread(_pinned, s)
        assert not {str(slot.ip) for slot in gone} & pinned
        assert {str(slot.ip) for slot in kept} <= pinned
        assert reaper(s, lambda h, n: None).batches < 11  # asked for together: removed together (a name once)
        await ports.remove_port(s, gone[1].veth_host)  # already gone: success
    finally:
        for slot in slots:
            with contextlib.suppress(FabricError):
                netlink.remove_netns(slot.netns)


async def test_no_fabric_is_success(make_settings_for: Make, root_only: None) -> None:
    s = make_settings_for()
    assert not netlink.netns_exists(s.fabric_netns)
    await ports.remove_port(s, "hearth-v0")
