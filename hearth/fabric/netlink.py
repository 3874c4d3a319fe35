"""Thin, typed helpers over pyroute2 that convert netlink errors into hearth's FabricError at the boundary."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from hearth.errors import FabricError, Hop
from hearth.fabric.dial import NETNS_RUN_DIR, socket_in_netns

NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)


def netns_exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _ip_netns(*args: str) -> subprocess.CompletedProcess[str]:
    # `ip netns add/del` only creates/removes the bind mount under /run/netns; its output is never parsed.
    return subprocess.run(["ip", "netns", *args], capture_output=True, text=True, timeout=10, check=False)


def create_netns(name: str) -> bool:
    """Create namespace `name`; False when it already existed."""
    if netns_exists(name):
        return False
    done = _ip_netns("add", name)
    if done.returncode != 0:
        if netns_exists(name):
            return False
        raise FabricError(
            Hop.FABRIC,
            f"cannot create network namespace {name}: {done.stderr.strip()}",
            "run as root (CAP_SYS_ADMIN) with /run/netns writable",
        )
    return True


_MNT_DETACH = 2


def remove_netns(name: str) -> None:
    """Delete namespace `name`; already gone is success. What `ip netns delete` does — detach the bind mount, remove
    the file — with two system calls instead of a process (a drain of 1,000 sandboxes forked 1,000 `ip`s: ~25 ms
    each); the namespace itself goes when its last process and mount are gone."""
    path = NETNS_RUN_DIR / name
    if not path.exists():
        return
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not (or no longer) mounted; the file is left
            raise FabricError(
                Hop.FABRIC,
                f"cannot delete network namespace {name}: umount {path}: {os.strerror(err)}",
                "run as root (CAP_SYS_ADMIN); check for processes still holding it",
            )
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise FabricError(
            Hop.FABRIC, f"cannot delete network namespace {name}: {exc}", "check for processes still holding it"
        ) from exc


@contextmanager
def ns(name: str, hop: Hop = Hop.FABRIC) -> Iterator[Any]:
    """A pyroute2 handle inside namespace `name`; netlink errors become FabricError naming `hop`.

    The netlink socket is created by a thread that joined the namespace (see `dial.socket_in_netns`) and handed to
    pyroute2 by file descriptor: no helper processes, and the namespace is never created implicitly.
    Call from a worker thread (pyroute2's synchronous API refuses a thread with a running event loop).
    """
    try:
        sock = socket_in_netns(name, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    except FileNotFoundError:
        raise FabricError(
            Hop.FABRIC,
            f"network namespace {name} does not exist",
            "run `hearth fabric up` (the controller does this at start)",
        ) from None
    with _guarded(IPRoute(fileno=sock.detach()), f"namespace {name}", hop) as handle:
        yield handle


@contextmanager
def _guarded(handle: Any, where: str, hop: Hop) -> Iterator[Any]:
    """Yield `handle`, close it after; netlink errors become FabricError naming `hop` and `where`."""
    try:
        yield handle
    except NetlinkError as exc:
        raise FabricError(hop, f"netlink error in {where}: {exc}", "see `hearth doctor`") from exc
    finally:
        handle.close()


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


@contextmanager
def root(hop: Hop = Hop.FABRIC) -> Iterator[Any]:
    """A pyroute2 handle in the caller's own (host) namespace; netlink errors become FabricError naming `hop`.

    Call from a worker thread, like `ns`.
    """
    with _guarded(IPRoute(), "the host namespace", hop) as handle:
        yield handle


@contextmanager
def at(netns: str | None, hop: Hop = Hop.FABRIC) -> Iterator[Any]:
    """A pyroute2 handle in `netns`, or in the host's own namespace when None (e.g. HEARTH_UPLINK_NETNS unset).

    A named namespace that does not exist is a FabricError naming `hop`: hearth never creates it implicitly.
    """
    if netns is None:
        with root(hop) as handle:
            yield handle
        return
    if not netns_exists(netns):
        raise FabricError(
            hop,
            f"network namespace {netns} (HEARTH_UPLINK_NETNS) does not exist",
            f"create it (ip netns add {netns}) and connect it to the outside, or unset HEARTH_UPLINK_NETNS",
        )
    with ns(netns, hop) as handle:
        yield handle


def link_kind(handle: Any, index: int) -> str | None:
    """The link's kind ("bridge", "veth", "tun", …); None for kinds without link info (e.g. lo)."""
    info = attr(handle.get_links(index)[0], "IFLA_LINKINFO")
    return str(attr(info, "IFLA_INFO_KIND")) if info is not None and attr(info, "IFLA_INFO_KIND") else None


def ipv4_addresses(handle: Any, index: int) -> list[str]:
    """The link's IPv4 addresses as "ip/prefix"."""
    return [f"{attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}" for a in handle.get_addr(index=index, family=socket.AF_INET)]
