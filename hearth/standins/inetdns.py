"""The internet stand-in's authoritative DNS server (hearth/standins/internet.py): A records for the providers'
names, stdlib only (UDP and TCP on port 53 of a socket made inside the stand-in's namespace).

Answers: A for a known name (the stand-in's address for it); NOERROR without answers for other types of a known
name (e.g. AAAA: the CLIs then use IPv4); NXDOMAIN for unknown names. Every query is recorded (name, type).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

A, AAAA = 1, 28
TTL = 60
MAX_TCP = 4096


@dataclass
class Query:
    name: str
    qtype: int
    answered: bool


@dataclass
class DnsLog:
    queries: list[Query] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def names(self) -> list[str]:
        with self.lock:
            return [q.name for q in self.queries]


def _qname(msg: bytes, at: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        if at >= len(msg):
            raise ValueError("truncated name")
        n = msg[at]
        if n == 0:
            return ".".join(labels).lower(), at + 1
        if n & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(msg[at + 1 : at + 1 + n].decode("ascii", "replace"))
        at += 1 + n


def answer(msg: bytes, zone: dict[str, IPv4Address], log: DnsLog) -> bytes | None:
    """The response to one query message (None: not a query we can parse: dropped)."""
    if len(msg) < 12:
        return None
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    if flags & 0x8000 or qd != 1:
        return None
    try:
        name, end = _qname(msg, 12)
    except ValueError:
        return None
    if end + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack("!HH", msg[end : end + 4])
    question = msg[12 : end + 4]
    addr = zone.get(name.rstrip("."))
    with log.lock:
        log.queries.append(Query(name, qtype, addr is not None))
    rd = flags & 0x0100
    rcode = 0 if addr is not None else 3  # NXDOMAIN for names the stand-in does not know
    records = b""
    if addr is not None and qtype == A and qclass == 1:
        records = b"\xc0\x0c" + struct.pack("!HHIH", A, 1, TTL, 4) + addr.packed
    header = struct.pack("!HHHHHH", qid, 0x8400 | rd | rcode, 1, 1 if records else 0, 0, 0)  # QR, AA
    return header + question + records


class DnsServer:
    """UDP + TCP on `sock_factory`'s sockets bound to (address, 53); threads stop on `close`."""

    def __init__(self, sock: Callable[[int], socket.socket], address: str, zone: dict[str, IPv4Address]) -> None:
        self.zone, self.log = zone, DnsLog()
        self._udp = sock(socket.SOCK_DGRAM)
        self._udp.bind((address, 53))
        self._udp.settimeout(0.2)
        self._tcp = sock(socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((address, 53))
        self._tcp.listen(16)
        self._tcp.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True, name="inet-dns-udp"),
            threading.Thread(target=self._serve_tcp, daemon=True, name="inet-dns-tcp"),
        ]
        for t in self._threads:
            t.start()

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                msg, peer = self._udp.recvfrom(1500)
            except TimeoutError:
                continue
            except OSError:
                return
            out = answer(msg, self.zone, self.log)
            if out is not None:
                try:
                    self._udp.sendto(out, peer)
                except OSError:
                    pass

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one_tcp, args=(conn,), daemon=True).start()

    def _one_tcp(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) != 2:
                    return
                (n,) = struct.unpack("!H", head)
                msg = conn.recv(min(n, MAX_TCP), socket.MSG_WAITALL)
                out = answer(msg, self.zone, self.log)
                if out is not None:
                    conn.sendall(struct.pack("!H", len(out)) + out)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        for s in (self._udp, self._tcp):
            s.close()
        for t in self._threads:
            t.join(timeout=2)


def resolve(sock: socket.socket, server: str, name: str, timeout: float = 3.0) -> IPv4Address | None:
    """One A query over UDP with `sock` (made in the asker's namespace): the first address, or None (NXDOMAIN or no
    answer). For tests and `hearth providers check --e2e` (its DNS step)."""
    qid = 0x4854
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", A, 1)
    sock.settimeout(timeout)
    sock.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question, (server, 53))
    msg = sock.recv(1500)
    if len(msg) < 12 or struct.unpack("!H", msg[:2])[0] != qid or msg[3] & 0x0F or not struct.unpack("!H", msg[6:8])[0]:
        return None
    return IPv4Address(msg[-4:])
