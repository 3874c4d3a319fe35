"""Isolation proven by real traffic between two live sandboxes.

Every probe runs on a socket created *inside* sandbox A's network namespace (`socket_in_netns`); the root namespace
never routes a private address. What a sandbox may reach: the fabric's bridge address, on ICMP and on the agent
callback port (HEARTH_CALLBACK_PORT) only. What it must not reach: the other sandbox (TCP, ICMP, ARP — also when it
routes through the bridge address), the controller's API, any other port of the fabric. A drop shows as a timeout;
a port that is allowed but closed answers with a reset (ECONNREFUSED), which is how "not dropped" is told apart.
Positive controls in the same test (the fabric reaches both sandboxes' VNC and agent ports; A reaches the bridge
by ARP, ICMP and on the callback port) make the negatives meaningful. Port 53 (TCP and UDP) on the bridge address is
let through too: the fabric's DNS forwarder listens there (hearth/egress/dns.py); with egress off nothing does, so it
answers refused at once.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable

import httpx
import pytest

from hearth.config import Settings
from hearth.fabric import netlink
from hearth.fabric.dial import call_in_netns, socket_in_netns
from hearth.fabric.links import BRIDGE_MAC
from hearth.fabric.nft import DNS_PORT
from hearth.fabric.ports import GUEST_IFNAME
from tests.conftest import running_controller
from tests.live import start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow]
PROBE_TIMEOUT = 1.5  # seconds a SYN / echo / ARP request may go unanswered before it counts as dropped


# ---- probes (blocking; run on worker threads) -------------------------------------------------------------


def tcp_scan(netns: str | None, host: str, ports: Iterable[int], timeout: float = PROBE_TIMEOUT) -> dict[int, str]:
    """Non-blocking connects from inside `netns`, in batches: port → "open" | "refused" | "timeout" | errno name."""
    todo = sorted(set(ports))
    result: dict[int, str] = {}
    for start in range(0, len(todo), 256):
        batch = todo[start : start + 256]
        socks = call_in_netns(netns, lambda n=len(batch): [socket.socket() for _ in range(n)])  # type: ignore[misc]
        try:
            pending: dict[int, tuple[int, socket.socket]] = {}
            for port, s in zip(batch, socks, strict=True):
                s.setblocking(False)
                err = s.connect_ex((host, port))
                if err == errno.EINPROGRESS:
                    pending[s.fileno()] = (port, s)
                else:
                    result[port] = _outcome(err)
            poller = select.poll()
            for fd in pending:
                poller.register(fd, select.POLLOUT)
            deadline = time.monotonic() + timeout
            while pending and (left := deadline - time.monotonic()) > 0:
                for fd, _ in poller.poll(left * 1000):
                    port, s = pending.pop(fd)
                    poller.unregister(fd)
                    result[port] = _outcome(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            for port, _ in pending.values():
                result[port] = "timeout"
        finally:
            for s in socks:
                s.close()
    return result


def _outcome(err: int) -> str:
    if err == 0:
        return "open"
    if err == errno.ECONNREFUSED:
        return "refused"
    return errno.errorcode.get(err, str(err))


def udp_probe(netns: str, host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """A datagram to a port nobody serves: ICMP port-unreachable ("refused") means it got through, silence means
    it was dropped ("timeout")."""
    s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(b"hearth isolation probe")
        try:
            s.recv(512)
            return "answered"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
    finally:
        s.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(netns: str, host: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """One ICMP echo from inside `netns`; True when `host` answered."""
    s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        ident = os.getpid() & 0xFFFF
        payload = b"hearth-isolation"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
        s.sendto(packet, (host, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, (src, _) = s.recvfrom(2048)
            except TimeoutError:
                break
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if src == host and kind == 0 and rid == ident:
                return True
        return False
    finally:
        s.close()


def arp(
    netns: str, ifname: str, sender_ip: str, target_ip: str, timeout: float = PROBE_TIMEOUT, peer: bool = False
) -> bool:
    """Broadcast one ARP who-has from `ifname` inside `netns`; True when `target_ip` answered. `peer`: only an
    answer naming another MAC than the fabric's own counts — the fabric answers for every sandbox with BRIDGE_MAC
    (proxy_arp_pvlan: the packet then reaches its forward chain, where it is dropped and counted)."""
    s = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    try:
        s.bind((ifname, 0x0806))
        mac = s.getsockname()[4][:6]
        body = struct.pack(
            "!HHBBH6s4s6s4s",
            1,
            0x0800,
            6,
            4,
            1,
            mac,
            socket.inet_aton(sender_ip),
            b"\0" * 6,
            socket.inet_aton(target_ip),
        )
        s.send(b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + body)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                frame = s.recv(2048)
            except TimeoutError:
                break
            op, spa = struct.unpack("!H", frame[20:22])[0], frame[28:32]
            if op == 2 and spa == socket.inet_aton(target_ip):
                if peer and frame[22:28] == bytes.fromhex(BRIDGE_MAC.replace(":", "")):
                    continue  # the fabric's proxy answer, not the peer's
                return True
        return False
    finally:
        s.close()


def rfb_banner(netns: str, host: str, port: int) -> bytes:
    s = socket_in_netns(netns)
    try:
        s.settimeout(5)
        s.connect((host, port))
        return s.recv(12)
    finally:
        s.close()


def drop_counters(fabric: str) -> dict[str, int]:
    """Packets counted by the drop rules of table inet hearth in the fabric namespace, per chain (nft -j, JSON)."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{fabric}", "--", "nft", "-j", "list", "table", "inet", "hearth"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    counts: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if not rule or not any("drop" in e for e in rule["expr"]):
            continue
        packets = sum(e["counter"]["packets"] for e in rule["expr"] if isinstance(e.get("counter"), dict))
        counts[rule["chain"]] = counts.get(rule["chain"], 0) + packets
    return counts


def route_via_bridge(netns: str, dst: str, gateway: str, add: bool) -> None:
    with netlink.ns(netns) as h:
        h.route("add" if add else "del", dst=f"{dst}/32", gateway=gateway)


# ---- the test -------------------------------------------------------------------------------------------


async def test_sandboxes_reach_only_the_callback_port(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false")
    s = settings
    bridge, fabric = str(s.bridge_ip), s.fabric_netns
    api_port = s.listen_host_port[1]
    run = asyncio.to_thread
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        a = await start_ready(http, s, "iso-a")
        b = await start_ready(http, s, "iso-b")
        print(f"\nA {a.netns} {a.sandbox_ip}   B {b.netns} {b.sandbox_ip}   bridge {bridge}")

        # Positive controls: the fabric (controller side) reaches both sandboxes' VNC and agent ports.
        for live in (a, b):
            assert (await run(rfb_banner, fabric, live.sandbox_ip, s.rfb_port)).startswith(b"RFB ")
            assert (await run(tcp_scan, fabric, live.sandbox_ip, [s.agent_port]))[s.agent_port] == "open"
        # … and A reaches the bridge: ARP, ICMP, and the callback port is not dropped.
        assert await run(arp, a.netns, GUEST_IFNAME, a.sandbox_ip, bridge), "A gets no ARP answer from the bridge"
        assert await run(ping, a.netns, bridge), "A cannot ping the bridge"
        callback = (await run(tcp_scan, a.netns, bridge, [s.callback_port]))[s.callback_port]
        assert callback in ("open", "refused"), f"callback port {s.callback_port}: {callback} (dropped?)"
        print(f"controls: fabric→A/B VNC+agent open, A→bridge ARP+ICMP answered, A→callback {callback}")

        before = await run(drop_counters, fabric)

        # A → B, on the shared segment: ports, ICMP, ARP.
        to_b = await run(tcp_scan, a.netns, b.sandbox_ip, [s.agent_port, s.rfb_port])
        print(f"A→B tcp: {to_b}")
        for port, got in to_b.items():
            assert got in ("timeout", "EHOSTUNREACH"), f"A reached B:{port} ({got})"
        assert not await run(ping, a.netns, b.sandbox_ip), "A pinged B"
        assert not await run(arp, a.netns, GUEST_IFNAME, a.sandbox_ip, b.sandbox_ip, peer=True), "B answered A's ARP"

        # A → B routed through the bridge address (a sandbox with root could set this route): nftables drops it.
        await run(route_via_bridge, a.netns, b.sandbox_ip, bridge, True)
        try:
            routed = await run(tcp_scan, a.netns, b.sandbox_ip, [s.agent_port, s.rfb_port])
            routed_ping = await run(ping, a.netns, b.sandbox_ip)
        finally:
            await run(route_via_bridge, a.netns, b.sandbox_ip, bridge, False)
        print(f"A→B via bridge: tcp {routed}, ping answered: {routed_ping}")
        assert set(routed.values()) == {"timeout"} and not routed_ping

        # The controller API: on 127.0.0.1 of the root namespace, which A cannot route to (its own loopback
        # refuses); on the bridge address the API port is dropped like every other port but the callback port.
        own_lo = (await run(tcp_scan, a.netns, "127.0.0.1", [api_port]))[api_port]
        assert own_lo == "refused", own_lo
        rng = random.Random(4242)
        ports = {*range(1, 1025), api_port, 4000, s.rfb_port, s.agent_port, s.callback_port, s.callback_port + 1}
        ports |= {rng.randint(1025, 65535) for _ in range(300)} | {65535}
        scan = await run(tcp_scan, a.netns, bridge, ports)
        not_dropped = {p: r for p, r in scan.items() if r != "timeout"}
        print(f"A→bridge tcp: {len(scan)} ports probed, not dropped: {not_dropped}")
        assert not_dropped == {s.callback_port: callback, DNS_PORT: "refused"}, not_dropped  # no forwarder: egress off
        udp = {p: await run(udp_probe, a.netns, bridge, p) for p in (DNS_PORT, 67, 123, api_port)}
        print(f"A→bridge udp: {udp}")
        assert udp.pop(DNS_PORT) == "refused" and set(udp.values()) == {"timeout"}, udp

        after = await run(drop_counters, fabric)
        print(f"nft drop counters before {before} after {after}")
        assert after.get("input", 0) - before.get("input", 0) >= len(scan) - len(not_dropped) + len(udp)
        assert after.get("forward", 0) - before.get("forward", 0) >= len(routed) + 1

        # The negatives did not disturb the sandboxes: B is still served to the fabric.
        assert (await run(rfb_banner, fabric, b.sandbox_ip, s.rfb_port)).startswith(b"RFB ")
