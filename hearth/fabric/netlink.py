"""Thin, typed helpers over pyroute2 that convert netlink errors into hearth's FabricError at the boundary."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import NetlinkError, NetNS, netns

from hearth.errors import FabricError, Hop


def netns_exists(name: str) -> bool:
    return name in netns.listnetns()


def list_netns() -> list[str]:
    return list(netns.listnetns())


def create_netns(name: str) -> bool:
    """Create namespace `name`; False when it already existed."""
    if netns_exists(name):
        return False
    try:
        netns.create(name)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise FabricError(
            Hop.FABRIC,
            f"cannot create network namespace {name}: {exc}",
            "run as root (CAP_SYS_ADMIN) with /run/netns writable",
        ) from exc
    return True


def remove_netns(name: str) -> None:
    """Delete namespace `name`; already gone is success."""
    try:
        netns.remove(name)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EINVAL):
            raise FabricError(
                Hop.FABRIC,
                f"cannot delete network namespace {name}: {exc}",
                "check for processes still holding it (`ip netns pids`)",
            ) from exc


@contextmanager
def ns(name: str, hop: Hop = Hop.FABRIC) -> Iterator[Any]:
    """A pyroute2 handle inside namespace `name`; netlink errors become FabricError naming `hop`."""
    if not netns_exists(name):
        raise FabricError(
            Hop.FABRIC,
            f"network namespace {name} does not exist",
            "run `hearth fabric up` (the controller does this at start)",
        )
    try:
        with NetNS(name) as handle:
            yield handle
    except NetlinkError as exc:
        raise FabricError(hop, f"netlink error in namespace {name}: {exc}", "see `hearth doctor`") from exc


def link_index(handle: Any, ifname: str) -> int | None:
    found = handle.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def delete_link(handle: Any, ifname: str) -> None:
    """Delete a link; already gone is success."""
    idx = link_index(handle, ifname)
    if idx is None:
        return
    try:
        handle.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise


def attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if hasattr(msg, "get_attr") else msg.get(name)
