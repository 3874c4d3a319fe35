"""Fabric ports are removed in batches: one RTM_DELLINK of a link group for every port asked for together.

The kernel unregisters each deleted network device under the rtnl lock and waits an RCU grace period for it; removed
one at a time, ports queue behind that lock (measured here: ~17 ms a veth, one after another: a drain of 1,000
sandboxes spent ~17 s of its wall time only there). Deleted as a group (`ip link del group N`), a batch shares one
unregistration: 100 veths in 44 ms in all.

So a removal joins a batch (hearth/store/coalesce.py's group commit): those asked for together are removed together,
and those asked for while a batch runs make up the next one. Each port of a batch is moved into the link group `GROUP` — the fabric namespace is
hearth's own, and only this module sets that group, one batch at a time — then the group is deleted and each port's
pinned neighbour entry removed. A port already gone is success. A batch that fails fails each of its callers with the
same error, as one removal would.
"""

from __future__ import annotations

import asyncio
import errno
import weakref
from collections.abc import Callable, Sequence

from pyroute2 import NetlinkError

from hearth.config import Settings
from hearth.errors import Hop
from hearth.fabric import netlink
from hearth.store.coalesce import Coalesced

GROUP = 0x68727468  # "hrth": the link group a batch of ports is deleted by (never any other link's group)


def remove_ports_sync(settings: Settings, ifnames: Sequence[str], unpin: Callable[[object, str], None]) -> None:
    """Delete the fabric's ports `ifnames` in one RTM_DELLINK of their link group, then unpin each (`unpin(handle,
    ifname)`); already gone (or no fabric at all) is success. Call from a worker thread."""
    if not netlink.netns_exists(settings.fabric_netns):
        return
    with netlink.ns(settings.fabric_netns, Hop.LINK) as fab:
        grouped = 0
        for name in ifnames:
            idx = netlink.link_index(fab, name)
            if idx is None:
                continue
            try:
                fab.link("set", index=idx, group=GROUP)
                grouped += 1
            except NetlinkError as exc:
                if exc.code not in (errno.ENODEV, errno.ENOENT):
                    raise
        if grouped:
            try:
                fab.link("del", group=GROUP)
            except NetlinkError as exc:
                if exc.code not in (errno.ENODEV, errno.ENOENT):
                    raise
        for name in ifnames:
            unpin(fab, name)


PortReaper = Coalesced[str]  # `await reaper(settings, unpin)(ifname)`: removed in the batch it joins
_REAPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[Settings, PortReaper]]] = (
    weakref.WeakKeyDictionary()
)


def reaper(settings: Settings, unpin: Callable[[object, str], None]) -> PortReaper:
    """The running loop's batches of `settings`' fabric namespace (the group commit of hearth/store/coalesce.py)."""
    per_loop = _REAPERS.setdefault(asyncio.get_running_loop(), {})
    found = per_loop.get(settings.fabric_netns)
    if found is None or found[0] != settings:

        async def work(names: list[str]) -> None:
            await asyncio.to_thread(remove_ports_sync, settings, names, unpin)

        found = per_loop[settings.fabric_netns] = (settings, Coalesced(work))
    return found[1]
