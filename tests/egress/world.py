"""A small world for the egress tests, all in namespaces the test creates (root only):

    sandbox namespaces ─ fabric (bridge, hearth's tables) ─ uplink ─ "host" H (HEARTH_UPLINK_NETNS, masquerades)
                                                                       └ veth ─ "internet" N
H is 192.0.2.1/24 (a TCP listener on :7070 plays a service of the host), N is 192.0.2.254/24 with,
on lo: 203.0.113.10 (TCP :80, answers "hi" and holds the connection), 203.0.113.53 (a tiny DNS responder, UDP and TCP: A
records of ZONE), and private addresses 10.20.0.5 and 10.30.0.5 (TCP :80 as well). Every listener is a socket made
inside its namespace and served by a daemon thread; `close` ends them and removes the namespaces.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TypeVar

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

from hearth.config import Settings
from hearth.fabric import netlink, ports
from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import Slot, slot_for
from tests import nsnames, uplinkns

T = TypeVar("T")
HOST_IP, NET_IP = "192.0.2.1", "192.0.2.254"
WEB_IP, DNS_IP = "203.0.113.10", "203.0.113.53"
PRIVATE_ALLOWED, PRIVATE_BLOCKED = "10.20.0.5", "10.30.0.5"
HOST_PORT, WEB_PORT = 7070, 80
# claude.ai: the name `hearth doctor` resolves (the first domain of the first provider, hearth/doctor/egress.py)
ZONE = {"idp.example.com.": WEB_IP, "www.example.net.": WEB_IP, "evil.example.org.": WEB_IP, "claude.ai.": WEB_IP}


@dataclass
class World:
    host: str  # H: HEARTH_UPLINK_NETNS
    net: str  # N
    socks: list[socket.socket] = field(default_factory=list)
    held: list[socket.socket] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.stop.set()
        for s in self.socks + self.held:
            with contextlib.suppress(OSError):
                s.close()
        for ns in (self.net, self.host):
            netlink.remove_netns(ns)


def _serve(w: World, sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    def loop() -> None:
        while not w.stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    def one(conn: socket.socket) -> None:
        """Answer, then hold the connection until the client closes it."""
        w.held.append(conn)
        with contextlib.suppress(OSError), conn:
            handle(conn)
            conn.settimeout(60)
            while conn.recv(4096):
                pass

    threading.Thread(target=loop, daemon=True).start()


def _listen(w: World, netns: str, ip: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        return s

    sock = call_in_netns(netns, make)
    w.socks.append(sock)
    return sock


def _dns_answer(wire: bytes) -> bytes:
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    name = q.question[0].name.to_text().lower()
    if name not in ZONE:
        r.set_rcode(dns.rcode.NXDOMAIN)
    elif q.question[0].rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", ZONE[name]))
    out: bytes = r.to_wire()
    return out


def build() -> World:
    """The host and internet namespaces with their listeners (blocking; call from a worker thread)."""
    w = World(uplinkns.create(), nsnames.new())
    try:
        netlink.create_netns(w.net)
        with netlink.ns(w.host) as h:
            h.link("add", ifname="h1w-h", kind="veth", peer={"ifname": "h1w-n", "net_ns_fd": w.net})
            i = netlink.link_index(h, "h1w-h")
            h.addr("add", index=i, address=HOST_IP, prefixlen=24)
            h.link("set", index=i, state="up")
            h.route("add", dst="0.0.0.0/0", gateway=NET_IP)
        with netlink.ns(w.net) as n:
            n.link("set", index=netlink.link_index(n, "lo") or 1, state="up")
            i = netlink.link_index(n, "h1w-n")
            n.addr("add", index=i, address=NET_IP, prefixlen=24)
            n.link("set", index=i, state="up")
            lo = netlink.link_index(n, "lo") or 1
            for ip in (WEB_IP, DNS_IP, PRIVATE_ALLOWED, PRIVATE_BLOCKED):  # (no dummy module needed)
                n.addr("add", index=lo, address=ip, prefixlen=32)
        _serve(w, _listen(w, w.host, HOST_IP, HOST_PORT), lambda c: c.sendall(b"host"))
        for ip in (WEB_IP, PRIVATE_ALLOWED, PRIVATE_BLOCKED):
            _serve(w, _listen(w, w.net, ip, WEB_PORT), lambda c: c.sendall(b"hi"))
        udp = _listen(w, w.net, DNS_IP, 53, socket.SOCK_DGRAM)

        def udp_loop() -> None:
            while not w.stop.is_set():
                try:
                    data, peer = udp.recvfrom(4096)
                    udp.sendto(_dns_answer(data), peer)
                except OSError:
                    return
                except Exception:  # a malformed query: ignore it
                    continue

        threading.Thread(target=udp_loop, daemon=True).start()

        def tcp_dns(c: socket.socket) -> None:
            (size,) = struct.unpack("!H", c.recv(2))
            out = _dns_answer(c.recv(size))
            c.sendall(struct.pack("!H", len(out)) + out)

        _serve(w, _listen(w, w.net, DNS_IP, 53), tcp_dns)
    except BaseException:
        w.close()
        raise
    return w


def settings_env(w: World) -> dict[str, str]:
    return {**uplinkns.egress_env(w.host), "HEARTH_DNS_UPSTREAM": DNS_IP}


# ---- sandboxes (a namespace with a veth on the bridge, as the netns driver makes them) --------------------------
def sandbox(s: Settings, index: int) -> Slot:
    slot = slot_for(s.fabric_netns, s.internal_network, s.bridge_ip, s.ip_pool_start, index)
    netlink.create_netns(slot.netns)
    ports.add_veth_sync(s, slot)
    return slot


def remove_sandbox(s: Settings, slot: Slot) -> None:
    ports.remove_port_sync(s, slot.veth_host)
    netlink.remove_netns(slot.netns)


def resolve(slot: Slot, name: str, server: IPv4Address, tcp: bool = False) -> tuple[str, list[str]]:
    """(rcode, A records) of `name` asked from inside the sandbox; rcode "timeout" when nothing answered."""

    def ask() -> tuple[str, list[str]]:
        q = dns.message.make_query(name, "A")
        try:
            if tcp:
                r = dns.query.tcp(q, str(server), timeout=4)
            else:
                r = dns.query.udp(q, str(server), timeout=4)
        except dns.exception.Timeout:
            return "timeout", []
        ips = [rd.to_text() for rrset in r.answer for rd in rrset]
        return dns.rcode.to_text(r.rcode()), ips

    return call_in_netns(slot.netns, ask, timeout=15)


def connect(slot: Slot, ip: str, port: int, timeout: float = 2.0, hold: list[socket.socket] | None = None) -> bool:
    """Whether a TCP connection from inside the sandbox opens and says something (`hold`: keep it open there)."""

    def dial() -> bool:
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
            ok = bool(s.recv(16))
        except OSError:
            s.close()
            return False
        if hold is not None:
            hold.append(s)
            return ok
        with contextlib.suppress(OSError), s:  # a clean close: the connection is over before the next one
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        return ok

    return call_in_netns(slot.netns, dial, timeout=timeout + 10)
