"""Egress from inside real sandbox namespaces, through the real fabric, gate and DNS forwarder, to a small internet
behind the uplink (tests/egress/world.py) — no mocks. One world and one fabric for the module.

Sandboxes: A (a sign-in sandbox of the example provider: under the provider policy it resolves idp.example.com only),
B (granted, any name), C (a plain desktop: no grant), D (the connection caps), E (the connection rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, generate_latest

from hearth.config import Settings, load_settings
from hearth.egress import rules
from hearth.egress.gate import DNS_REFUSED, EgressGate
from hearth.egress.policy import Grant, wants_egress
from hearth.egress.runtime import EgressRuntime
from hearth.fabric.dial import call_in_netns
from hearth.fabric.fabric import Fabric
from hearth.fabric.slot import Slot
from tests import nsnames
from tests.egress import world
from tests.egress.world import World

pytestmark = [pytest.mark.netns, pytest.mark.asyncio(loop_scope="module")]
EXAMPLE = ("idp.example.com",)


@dataclass
class Lab:
    s: Settings
    w: World
    egress: EgressRuntime
    registry: CollectorRegistry
    slots: dict[str, Slot]

    @property
    def gate(self) -> EgressGate:
        return self.egress.gate

    async def drops(self, name: str) -> dict[str, int]:
        d = await self.gate.refresh()
        return d.live.get(name, {})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    if not Path("/run").is_dir() or not hasattr(socket, "AF_NETLINK"):
        pytest.skip("needs Linux network namespaces")
    w = await asyncio.to_thread(world.build)
    slots: dict[str, Slot] = {}
    s = load_settings(
        {
            **world.settings_env(w),
            "HEARTH_FABRIC_NETNS": nsnames.new(),
            "HEARTH_DATA_DIR": str(tmp_path_factory.mktemp("egress")),
            "HEARTH_EGRESS": "signin",
            "HEARTH_EGRESS_ALLOW": "10.20.0.0/16",
            "HEARTH_EGRESS_POLICY": "provider",
            "HEARTH_EGRESS_CONN_MAX": "3",
            "HEARTH_EGRESS_CONN_RATE": "5",
        },
        env_file=None,
    )
    runtime = EgressRuntime(s, EgressGate(s))
    registry = CollectorRegistry()
    runtime.register(registry)
    try:
        await Fabric(s).up()
        await runtime.start()
        for i, name in enumerate("ABCDE"):
            slots[name] = await asyncio.to_thread(world.sandbox, s, i)
        grants = {"A": EXAMPLE, "B": None, "D": None, "E": None}
        for name, domains in grants.items():
            await runtime.gate.grant(Grant(slots[name].ip, name, domains))
        yield Lab(s, w, runtime, registry, slots)
    finally:
        await runtime.stop()
        for slot in slots.values():
            await asyncio.to_thread(world.remove_sandbox, s, slot)
        with contextlib.suppress(Exception):
            await Fabric(s).down(force=True)
        await asyncio.to_thread(w.close)


async def test_who_gets_egress_follows_the_setting(lab: Lab) -> None:
    s = lab.s
    assert wants_egress(s, cli=True, provider=None) and wants_egress(s, cli=False, provider="example")
    assert not wants_egress(s, cli=False, provider=None)  # a plain desktop under "signin"
    every = s.model_copy(update={"egress": True})
    assert wants_egress(every, cli=False, provider=None)
    none = s.model_copy(update={"egress": False})
    assert not wants_egress(none, cli=True, provider="example")


async def test_a_name_resolves_through_the_forwarder_and_the_page_answers(lab: Lab) -> None:
    a = lab.slots["A"]
    assert await asyncio.to_thread(world.resolve, a, "idp.example.com", lab.s.bridge_ip) == ("NOERROR", [world.WEB_IP])
    tcp = await asyncio.to_thread(world.resolve, a, "idp.example.com", lab.s.bridge_ip, True)
    assert tcp == ("NOERROR", [world.WEB_IP])
    assert await asyncio.to_thread(world.connect, a, world.WEB_IP, world.WEB_PORT)
    assert DNS_REFUSED not in await lab.drops("A")


async def test_provider_policy_refuses_a_foreign_name_and_counts_it(lab: Lab) -> None:
    a, b = lab.slots["A"], lab.slots["B"]
    assert await asyncio.to_thread(world.resolve, a, "evil.example.org", lab.s.bridge_ip) == ("REFUSED", [])
    assert await asyncio.to_thread(world.resolve, a, "notidp.example.com", lab.s.bridge_ip) == ("REFUSED", [])
    assert (await lab.drops("A"))[DNS_REFUSED] == 2
    assert await asyncio.to_thread(world.resolve, b, "evil.example.org", lab.s.bridge_ip) == ("NOERROR", [world.WEB_IP])
    text = generate_latest(lab.registry).decode()
    assert 'hearth_egress_drops_total{reason="dns_refused",sandbox="A"} 2.0' in text, text


async def test_metadata_host_fabric_other_sandbox_and_private_are_refused_and_counted(lab: Lab) -> None:
    b, a = lab.slots["B"], lab.slots["A"]
    uplink_host_end = str(next(lab.s.uplink_network.hosts()))
    refused = [
        ("169.254.169.254", 80),  # the metadata address
        (uplink_host_end, world.HOST_PORT),  # the host, on its uplink address
        (world.HOST_IP, world.HOST_PORT),  # the host, on its own address (its input chain refuses the uplink)
        (str(lab.s.bridge_ip), 9999),  # the fabric
        (str(a.ip), 80),  # another sandbox
        (world.PRIVATE_BLOCKED, world.WEB_PORT),  # private
        ("172.16.0.5", 80),  # private
        ("100.64.0.1", 80),  # CGNAT
    ]
    for ip, port in refused:
        assert not await asyncio.to_thread(world.connect, b, ip, port, 1.5), f"{ip}:{port} reached"
    got = await lab.drops("B")
    assert got.get("blocked", 0) >= 5, got  # metadata, uplink end, 10.30/172.16/100.64 (SYN retries count too)
    assert got.get("fabric", 0) >= 2, got  # the bridge address and the other sandbox
    text = generate_latest(lab.registry).decode()
    assert 'hearth_egress_drops_total{reason="blocked",sandbox="B"}' in text


async def test_an_allow_listed_private_range_works(lab: Lab) -> None:
    assert await asyncio.to_thread(world.connect, lab.slots["B"], world.PRIVATE_ALLOWED, world.WEB_PORT)


async def test_a_plain_desktop_has_no_way_out(lab: Lab) -> None:
    c = lab.slots["C"]
    assert await asyncio.to_thread(world.resolve, c, "idp.example.com", lab.s.bridge_ip) == ("REFUSED", [])
    assert not await asyncio.to_thread(world.connect, c, world.WEB_IP, world.WEB_PORT, 1.5)
    got = await lab.drops("ungranted " + str(c.ip))
    assert got.get("no_egress", 0) >= 1, got


async def test_the_concurrent_connection_cap_bites(lab: Lab) -> None:
    d = lab.slots["D"]
    held: list[socket.socket] = []
    try:
        for _ in range(lab.s.egress_conn_max):
            assert await asyncio.to_thread(world.connect, d, world.WEB_IP, world.WEB_PORT, 3.0, held)
        assert not await asyncio.to_thread(world.connect, d, world.WEB_IP, world.WEB_PORT, 1.5)
        assert (await lab.drops("D")).get("conn_limit", 0) >= 1
    finally:
        for sock in held:
            sock.close()


async def test_the_connection_rate_cap_bites(lab: Lab) -> None:
    """New connections one after the other, each closed before the next: beyond the burst (4 x 5/s) one is dropped
    and counted — the first refusal ends the loop. The table is rebuilt for this test with a concurrent-connection
    cap out of reach (closed connections linger in conntrack and would count against it first)."""
    e = lab.slots["E"]
    gate = EgressGate(lab.s.model_copy(update={"egress_conn_max": 100_000}))
    await gate.up()
    try:
        await gate.grant(Grant(e.ip, "E", None))
        refused = 0
        for _ in range(500):
            if not await asyncio.to_thread(world.connect, e, world.WEB_IP, world.WEB_PORT, 0.5):
                refused += 1
                break
        assert refused == 1
        got = (await gate.refresh()).live.get("E", {})
        assert got.get("conn_rate", 0) >= 1 and "conn_limit" not in got, got
    finally:
        await lab.gate.up()  # the module's table again, with its grants


async def test_a_revoked_sandbox_loses_its_way_out_and_its_counts_go_to_the_totals(lab: Lab) -> None:
    b = lab.slots["B"]
    before = (await lab.gate.refresh()).totals["blocked"]
    await lab.gate.revoke(b.ip)
    assert not await asyncio.to_thread(world.connect, b, world.WEB_IP, world.WEB_PORT, 1.5)
    after = await lab.gate.refresh()
    assert "B" not in after.live and after.totals["blocked"] == before
    await lab.gate.grant(Grant(b.ip, "B", None))
    assert await asyncio.to_thread(world.connect, b, world.WEB_IP, world.WEB_PORT)


async def test_another_sandbox_is_refused_by_the_fabric_and_counted(lab: Lab) -> None:
    """Port isolation alone drops a sandbox's ARP for another sandbox without a count: the fabric answers it
    (proxy_arp_pvlan), so the packet is routed into the forward chain, dropped there and counted `fabric` for the
    sender."""
    a, b = lab.slots["A"], lab.slots["B"]
    before = (await lab.drops("B")).get("fabric", 0)
    assert not await asyncio.to_thread(world.connect, b, str(a.ip), 8022, 1.5), "another sandbox reached"
    after = (await lab.drops("B")).get("fabric", 0)
    assert after > before, (before, after)


def _upload(slot: Slot, ip: str, port: int, size: int) -> bool:
    """From inside the sandbox: connect, read the greeting, then push `size` bytes as fast as TCP lets it (5 s at
    most); whether the greeting came (the cap throttles, it does not cut the sandbox off)."""

    def push() -> bool:
        with socket.create_connection((ip, port), timeout=5) as c:
            greeted = bool(c.recv(16))
            with contextlib.suppress(OSError):
                c.sendall(b"x" * size)
            return greeted

    return call_in_netns(slot.netns, push, timeout=30)


async def test_the_bandwidth_cap_bites(lab: Lab) -> None:
    """A sandbox pushing far more than HEARTH_EGRESS_BANDWIDTH (16 KiB/s here) has its excess dropped and counted
    `bandwidth` for it. The table is rebuilt for this test with the cap set (the module's has none)."""
    e = lab.slots["E"]
    gate = EgressGate(lab.s.model_copy(update={"egress_bandwidth": 16, "egress_conn_max": 100_000}))
    await gate.up()
    try:
        await gate.grant(Grant(e.ip, "E", None))
        assert await asyncio.to_thread(_upload, e, world.WEB_IP, world.WEB_PORT, 1024 * 1024)
        got = (await gate.refresh()).live.get("E", {})
        assert got.get("bandwidth", 0) >= 1, got
    finally:
        await lab.gate.up()  # the module's table again, with its grants


async def test_revokes_at_once_share_one_listing_and_all_go(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain revokes many sandboxes at once: those that wait for the gate are applied together (one listing of
    the table for the batch, not one each), and every one of them loses its way out."""
    names = ("B", "D", "E")
    listings = 0
    real = lab.gate.listing

    async def counted() -> list[dict[str, object]] | None:
        nonlocal listings
        listings += 1
        return await real()

    monkeypatch.setattr(lab.gate, "listing", counted)
    try:
        await asyncio.gather(*(lab.gate.revoke(lab.slots[n].ip) for n in names))
        assert listings <= 2  # the first revoke alone, then the two that waited for it together
        granted = rules.set_elements(await real() or [], "granted")
        assert not {str(lab.slots[n].ip) for n in names} & set(granted)
        assert str(lab.slots["A"].ip) in granted  # the others keep theirs
        assert not await asyncio.to_thread(world.connect, lab.slots["B"], world.WEB_IP, world.WEB_PORT, 1.5)
    finally:
        for n in names:
            await lab.gate.grant(Grant(lab.slots[n].ip, n, None))
    assert await asyncio.to_thread(world.connect, lab.slots["B"], world.WEB_IP, world.WEB_PORT)
