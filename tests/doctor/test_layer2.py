"""The doctor attributes layer-2 drops to the port that sent them (issue 20, item 4). Two real sessions, A and B, on
one controller; A's sandbox sends, from its own namespace through its own port, ARP replies and IPv4 packets that
claim B's address. Table bridge hearth drops them and counts them on A's port. B's report is clean (it names the
drops as other sandboxes'), A's report fails at "layer 2" naming its port and the frames, once; the host report
names A's port.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hearth.doctor import diagnose
from hearth.errors import Hop
from hearth.fabric.dial import call_in_netns
from hearth.fabric.ports import GUEST_IFNAME
from hearth.fabric.slot import Slot
from tests.doctor.conftest import Case, live_session

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
ARP, IPV4 = 0x0806, 0x0800


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live() -> AsyncIterator[tuple[Case, str, Slot]]:
    """Session A (the fixture's own) and session B (its id and slot)."""
    async with live_session(IP_POOL_END="192.168.100.4") as a:
        r = await a.http.post("/api/auth/start", json={"user_id": "victim"})
        assert r.status_code == 201, r.text
        b = r.json()["session_id"]
        view = await a.ctl.service.wait_until(b, 90)
        assert view.status.value == "ready" and view.slot is not None, view
        try:
            yield a, b, a.ctl.service.ipam.slot(view.slot)
        finally:
            await a.http.post(f"/api/auth/session/{b}/cancel")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _spoof(attacker: Slot, victim: Slot, arps: int, ips: int) -> None:
    """From the attacker's namespace, out of its own eth0: ARP replies and IPv4/UDP packets with the victim's
    address and the attacker's own MAC (what a hostile sandbox does to take another's traffic)."""
    mac, gw = _mac(attacker.mac), socket.inet_aton(str(attacker.gateway))
    spa = socket.inet_aton(str(victim.ip))
    arp = b"\xff" * 6 + mac + struct.pack("!H", ARP)
    arp += struct.pack("!HHBBH", 1, IPV4, 6, 4, 2) + mac + spa + b"\x00" * 6 + gw
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, spa, gw)
    ip = b"\xff" * 6 + mac + struct.pack("!H", IPV4) + header + struct.pack("!HHHH", 4000, 4000, 8, 0)

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((GUEST_IFNAME, 0))
            for frame in [arp] * arps + [ip] * ips:
                sock.send(frame)

    call_in_netns(attacker.netns, send)


async def test_drops_are_attributed_to_the_sandbox_that_sent_them(live: tuple[Case, str, Slot]) -> None:
    a, b, b_slot = live
    await a.wait_healthy()
    await diagnose(a.ctl)  # the host report takes (resets) whatever was counted before this test
    await asyncio.to_thread(_spoof, a.slot, b_slot, 3, 2)

    rep_b = await diagnose(a.ctl, b)  # the victim's report first: A's drops are still on A's counters
    l2_b = rep_b.check("layer 2")
    assert l2_b.ok is True, l2_b
    assert rep_b.first_failure is None, rep_b.first_failure
    assert f"this sandbox's port {b_slot.veth_host} spoofed nothing" in l2_b.evidence, l2_b
    assert "5 frame(s) spoofed by other sandboxes' ports are theirs" in l2_b.evidence, l2_b

    rep_a = await diagnose(a.ctl, a.session_id)
    l2_a = rep_a.check("layer 2")
    assert l2_a.ok is False and l2_a.hop is Hop.ARP, l2_a
    assert f"from this sandbox's port {a.slot.veth_host}: 3 ARP and 2 IPv4 frame(s)" in l2_a.evidence, l2_a
    assert "end this session" in l2_a.hint
    assert l2_a.data["arp_spoof"] == 3 and l2_a.data["ip_spoof"] == 2 and l2_a.data["port"] == a.slot.veth_host
    assert (await diagnose(a.ctl, a.session_id)).check("layer 2").ok is True  # reported once
    assert (await diagnose(a.ctl, b)).check("layer 2").ok is True

    await asyncio.to_thread(_spoof, a.slot, b_slot, 1, 0)
    host = (await diagnose(a.ctl)).check("layer 2")
    assert host.ok is False and f"sent by port {a.slot.veth_host} (slot {a.slot.index})" in host.evidence, host
    assert host.data["ports"] == {a.slot.veth_host: {"arp_spoof": 1, "ip_spoof": 0}}
    assert (await diagnose(a.ctl, a.session_id)).check("layer 2").ok is True  # the host report took it
