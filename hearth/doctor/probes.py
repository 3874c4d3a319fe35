"""Low-level, read-only observations for the doctor, each made from inside the namespace it concerns.

Synchronous functions (call them with `asyncio.to_thread`): netlink through pyroute2 handles opened inside the
namespace, raw ARP/ICMP through sockets created inside it (`dial.socket_in_netns`), sysctls read by a thread that
joined it, nftables through `nft -j` (JSON). Every blocking wait is bounded by its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hearth.childproc import kill_and_reap
from hearth.fabric import netlink, nftrun
from hearth.fabric.dial import NETNS_RUN_DIR, call_in_netns, socket_in_netns

IFF_UP = 0x1
IFF_NOARP = 0x80
ETH_P_ARP = 0x0806
NUD = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}
BRPORT_STATE = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    kind: str | None
    up: bool  # administratively (IFF_UP)
    carrier: bool
    operstate: str
    master: str | None  # name of the master device, None when detached
    mac: str
    noarp: bool
    addresses: list[str] = field(default_factory=list)  # IPv4 "ip/prefix"
    isolated: bool | None = None  # bridge port isolation, None when not a bridge port
    port_state: str | None = None  # STP state of a bridge port ("forwarding", …)

    def describe(self) -> str:
        parts = [
            f"{self.name}: {'UP' if self.up else 'DOWN'}",
            f"carrier {'yes' if self.carrier else 'no'}",
            f"operstate {self.operstate}",
            f"master {self.master or 'none'}",
        ]
        if self.port_state is not None:
            parts.append(f"port {self.port_state}")
        if self.addresses:
            parts.append("addresses " + ", ".join(self.addresses))
        if self.noarp:
            parts.append("NOARP")
        return ", ".join(parts)


def _link_info(h: Any, msg: Any, names: dict[int, str]) -> LinkInfo:
    info = netlink.attr(msg, "IFLA_LINKINFO")
    kind = netlink.attr(info, "IFLA_INFO_KIND") if info is not None else None
    slave = netlink.attr(info, "IFLA_INFO_SLAVE_DATA") if info is not None else None
    isolated = port_state = None
    if slave is not None and netlink.attr(info, "IFLA_INFO_SLAVE_KIND") == "bridge":
        isolated = bool(netlink.attr(slave, "IFLA_BRPORT_ISOLATED"))
        st = netlink.attr(slave, "IFLA_BRPORT_STATE")
        port_state = BRPORT_STATE.get(int(st), str(st)) if st is not None else None
    master = netlink.attr(msg, "IFLA_MASTER")
    index = int(msg["index"])
    return LinkInfo(
        name=str(netlink.attr(msg, "IFLA_IFNAME")),
        index=index,
        kind=str(kind) if kind else None,
        up=bool(msg["flags"] & IFF_UP),
        carrier=bool(netlink.attr(msg, "IFLA_CARRIER")),
        operstate=str(netlink.attr(msg, "IFLA_OPERSTATE") or "UNKNOWN"),
        master=names.get(int(master), str(master)) if master else None,
        mac=str(netlink.attr(msg, "IFLA_ADDRESS") or ""),
        noarp=bool(msg["flags"] & IFF_NOARP),
        addresses=netlink.ipv4_addresses(h, index),
        isolated=isolated,
        port_state=port_state,
    )


def links(netns: str, only: tuple[str, ...] | None = None) -> dict[str, LinkInfo]:
    """The links of `netns` (all, or just those named in `only`) with their addresses and bridge-port state."""
    with netlink.ns(netns) as h:
        msgs = list(h.get_links())
        names = {int(m["index"]): str(netlink.attr(m, "IFLA_IFNAME")) for m in msgs}
        return {
            names[int(m["index"])]: _link_info(h, m, names)
            for m in msgs
            if only is None or names[int(m["index"])] in only
        }


@dataclass(frozen=True)
class Neighbour:
    ip: str
    state: str  # "REACHABLE", "STALE", … ("|"-joined when several bits are set)
    lladdr: str | None
    device: str | None


def neighbour(netns: str, ip: str) -> Neighbour | None:
    """The kernel's neighbour (ARP) entry for `ip` in `netns`, or None when there is none."""
    with netlink.ns(netns) as h:
        names = {int(m["index"]): str(netlink.attr(m, "IFLA_IFNAME")) for m in h.get_links()}
        for n in h.get_neighbours(family=socket.AF_INET):
            if netlink.attr(n, "NDA_DST") != ip:
                continue
            bits = int(n["state"])
            state = "|".join(name for bit, name in NUD.items() if bits & bit) or "NONE"
            lladdr = netlink.attr(n, "NDA_LLADDR")
            return Neighbour(ip, state, str(lladdr) if lladdr else None, names.get(int(n["ifindex"])))
    return None


def fdb_ports(netns: str, bridge: str, macs: list[str]) -> dict[str, str]:
    """MAC → the bridge port it was learned on (from the bridge's forwarding database)."""
    want = {m.lower() for m in macs}
    out: dict[str, str] = {}
    with netlink.ns(netns) as h:
        names = {int(m["index"]): str(netlink.attr(m, "IFLA_IFNAME")) for m in h.get_links()}
        br = netlink.link_index(h, bridge)
        for entry in h.fdb("dump"):
            mac = str(netlink.attr(entry, "NDA_LLADDR") or "").lower()
            master = netlink.attr(entry, "NDA_MASTER")
            if mac in want and (master is None or master == br):
                port = names.get(int(entry["ifindex"]))
                if port and port != bridge:
                    out[mac] = port
    return out


def nudge(netns: str, ip: str, port: int = 9) -> None:
    """One UDP datagram to `ip` from inside `netns`: makes the kernel resolve (or re-confirm) the neighbour."""
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.sendto(b"hearth-doctor", (ip, port))
    finally:
        sock.close()


def arp_probe(netns: str, ifname: str, src_ip: str, target_ip: str, window: float = 0.15, tries: int = 2) -> list[str]:
    """ARP "who-has target_ip" broadcast on `ifname` inside `netns`; the distinct MACs that answered, in order.

    Waits the whole `window` after each request (a second, duplicate answer must be seen too); sends a second request
    only when the first got no answer.
    """
    sock = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.bind((ifname, ETH_P_ARP))
        own = sock.getsockname()[4]
        tpa, spa = IPv4Address(target_ip).packed, IPv4Address(src_ip).packed
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + own + spa + b"\0" * 6 + tpa
        frame = b"\xff" * 6 + own + struct.pack("!H", ETH_P_ARP) + arp
        seen: list[str] = []
        for _ in range(tries):
            sock.send(frame)
            end = time.monotonic() + window
            while (left := end - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data = sock.recv(2048)
                if len(data) < 42 or data[12:14] != b"\x08\x06":
                    continue
                if struct.unpack("!H", data[20:22])[0] == 2 and data[28:32] == tpa:
                    mac = data[22:28].hex(":")
                    if mac not in seen:
                        seen.append(mac)
            if seen:
                break
        return seen
    finally:
        sock.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(netns: str, ip: str, timeout: float, ident: int | None = None) -> float | None:
    """One ICMP echo from a raw socket created inside `netns`; the round trip in seconds, None without reply."""
    ident = secrets.randbits(16) if ident is None else ident
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        payload = b"hearth-doctor"
        head = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        packet = struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, 1) + payload
        t0 = time.monotonic()
        sock.sendto(packet, (ip, 0))
        end = t0 + timeout
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data, (src, _) = sock.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            if src != ip or len(data) < ihl + 8:
                continue
            kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if kind == 0 and rid == ident:
                return time.monotonic() - t0
        return None
    finally:
        sock.close()


def sysctl(netns: str, path: str) -> str | None:
    """A /proc/sys entry as seen from inside `netns` (None when it does not exist there)."""

    def read() -> str | None:
        try:
            return (Path("/proc/sys") / path).read_text().strip()
        except OSError:
            return None

    return call_in_netns(netns, read, timeout=2.0)


def netns_exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    state: str  # R, S, T (stopped), Z, …
    cmdline: str


def processes_in(netns: str) -> list[Proc]:
    """Processes whose network namespace is `netns` (compared by device and inode), with their state."""
    try:
        target = os.stat(NETNS_RUN_DIR / netns)
    except OSError:
        return []
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
            if (st.st_dev, st.st_ino) != (target.st_dev, target.st_ino):
                continue
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
            state = stat[stat.rindex(b")") + 2 :].split()[0].decode()
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        out.append(Proc(int(entry.name), comm, state, cmd.strip()))
    return out


async def nft_ruleset(netns: str, timeout: float) -> list[dict[str, Any]]:
    """`nft -j list ruleset` inside `netns`, parsed (objects of every table of every family)."""
    proc = await asyncio.create_subprocess_exec(
        *nftrun.argv(netns, "list", "ruleset"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await kill_and_reap(proc, 2)
        raise
    if proc.returncode != 0:
        raise OSError(f"nft -j list ruleset failed in {netns}: {err.decode(errors='replace').strip()[:300]}")
    data = json.loads(out) if out.strip() else {}
    items: list[dict[str, Any]] = data.get("nftables", [])
    return [i for i in items if "metainfo" not in i]
