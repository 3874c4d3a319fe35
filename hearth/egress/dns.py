"""The DNS forwarder on BRIDGE_IP:53 (UDP and TCP, inside the fabric namespace): every sandbox's resolver.

A query from a sandbox is answered REFUSED (and counted for it) when its address has no egress grant, or — under
HEARTH_EGRESS_POLICY=provider — when a name it asks is outside its provider's `egress_domains`; otherwise it is sent
as-is to the upstream resolvers (HEARTH_DNS_UPSTREAM, default the nameservers of the host's /etc/resolv.conf), one
after the other, from the uplink's outer namespace (HEARTH_UPLINK_NETNS, default the host's: where "the host" is),
each with a timeout; none answering: SERVFAIL. The controller owns its lifecycle (`start`/`stop`).
Messages are parsed with dnspython; nothing is cached (the upstream resolvers do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import cast

import dns.exception
import dns.message
import dns.rcode

from hearth.config import Settings
from hearth.egress.gate import EgressGate
from hearth.egress.policy import name_allowed
from hearth.errors import FabricError, Hop
from hearth.fabric.dial import acall_in_netns

log = logging.getLogger("hearth.egress.dns")
PORT = 53
UPSTREAM_TIMEOUT = 2.0
CLIENT_TIMEOUT = 10.0  # a TCP client has this long per message
MAX_PENDING = 1024  # queries in flight (UDP and TCP clients); beyond, new ones are dropped
RESOLV_CONF = Path("/etc/resolv.conf")


def host_nameservers(path: Path = RESOLV_CONF) -> list[str]:
    """The IPv4 nameservers of a resolv.conf (the host's by default)."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                out.append(str(IPv4Address(parts[1])))
    return out


def upstreams(s: Settings) -> list[str]:
    return [str(a) for a in s.dns_upstream] or host_nameservers()


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    r = dns.message.make_response(query)
    r.set_rcode(rcode)
    wire: bytes = r.to_wire()
    return wire


class DnsForwarder:
    def __init__(
        self,
        settings: Settings,
        gate: EgressGate,
        *,
        servers: list[str] | None = None,
        timeout: float = UPSTREAM_TIMEOUT,
        on_refused: Callable[[IPv4Address, str], None] | None = None,
    ) -> None:
        self.s = settings
        self.gate = gate
        self.servers = servers if servers is not None else upstreams(settings)
        self.timeout = timeout
        self.on_refused = on_refused
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return str(self.s.bridge_ip), PORT

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on BRIDGE_IP:53 (UDP and TCP) inside the fabric namespace."""
        ns, addr = self.s.fabric_netns, self.address

        def bound(kind: int) -> socket.socket:
            sock = socket.socket(socket.AF_INET, kind)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            return sock

        try:
            udp = await acall_in_netns(ns, lambda: bound(socket.SOCK_DGRAM))
            tcp = await acall_in_netns(ns, lambda: bound(socket.SOCK_STREAM))
        except (OSError, TimeoutError) as exc:
            raise FabricError(
                Hop.DNS, f"the DNS forwarder cannot listen on {addr[0]}:{PORT} in {ns}: {exc}", "run `hearth fabric up`"
            ) from exc
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp, limit=2**16)
        log.info("DNS forwarder on %s:%d in %s, upstream %s", addr[0], PORT, ns, ", ".join(self.servers) or "none")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 5)
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- one query ---------------------------------------------------------------------------------------------
    async def answer(self, wire: bytes, src: IPv4Address, tcp: bool = False) -> bytes | None:
        """The response to one query message from `src` (None: not a query: dropped)."""
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError):
            return None
        if query.flags & 0x8000 or not query.question:
            return None
        names = [q.name.to_text() for q in query.question]
        if src == self.s.bridge_ip:  # the fabric itself (the doctor asking whether we answer): not a sandbox
            return _reply(query, dns.rcode.REFUSED)
        grant = self.gate.grant_of(src)
        why = None
        if grant is None:
            why = "no egress for this sandbox"
        elif self.s.egress_policy == "provider" and grant.domains is not None:
            foreign = [n for n in names if not name_allowed(n, grant.domains)]
            if foreign:
                why = f"{foreign[0]} is outside the provider's domains"
        if why is not None:
            self.gate.count_dns_refusal(src)
            owner = grant.owner if grant is not None else ""
            log.info("DNS refused: %s (%s)", ", ".join(names), why, extra={"session_id": owner, "ip": str(src)})
            if self.on_refused is not None:
                self.on_refused(src, names[0])
            return _reply(query, dns.rcode.REFUSED)
        for server in self.servers:
            try:
                return await (self._tcp_upstream if tcp else self._udp_upstream)(wire, server)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                log.warning("DNS upstream %s did not answer: %s", server, exc or type(exc).__name__)
        return _reply(query, dns.rcode.SERVFAIL)

    async def _udp_upstream(self, wire: bytes, server: str) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await acall_in_netns(
            self.s.uplink_netns or None, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), self.timeout
        )
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (server, PORT)), self.timeout)
            await asyncio.wait_for(loop.sock_sendall(sock, wire), self.timeout)
            qid = wire[:2]
            while True:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65535), self.timeout)
                if data[:2] == qid:
                    return data
        finally:
            sock.close()

    async def _tcp_upstream(self, wire: bytes, server: str) -> bytes:
        loop = asyncio.get_running_loop()
        sock = await acall_in_netns(
            self.s.uplink_netns or None, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), self.timeout
        )
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (server, PORT)), self.timeout)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(sock=sock), self.timeout)
        except BaseException:
            sock.close()
            raise
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await asyncio.wait_for(writer.drain(), self.timeout)
            (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.timeout))
            return await asyncio.wait_for(reader.readexactly(size), self.timeout)
        finally:
            writer.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            if len(self._tasks) > MAX_PENDING:
                return
            src = IPv4Address(peer[0])
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), CLIENT_TIMEOUT)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return
                (size,) = struct.unpack("!H", head)
                wire = await asyncio.wait_for(reader.readexactly(size), CLIENT_TIMEOUT)
                out = await self.answer(wire, src, tcp=True)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await asyncio.wait_for(writer.drain(), CLIENT_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, fwd: DnsForwarder) -> None:
        self.fwd = fwd
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(self.fwd._tasks) < MAX_PENDING:
            self.fwd.spawn(self._one(data, addr))

    async def _one(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            out = await self.fwd.answer(data, IPv4Address(str(addr[0])))
        except Exception:
            log.exception("DNS forwarder: a query crashed")
            return
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)
