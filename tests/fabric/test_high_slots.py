"""A node sized for 1,000+ sandboxes: sandboxes on high slots of a /21 (indices past 253, addresses past the first
/24, the pool's very last address) boot, are reached by the fabric, reach their bridge, and stay isolated from each
other — by real traffic from inside their namespaces, through a real controller.

The node's other slots are held by leases written to the store beforehand (owned like the reconciler's quarantine
leases, which it leaves alone), so the IPAM hands these sessions exactly the high slots; nothing else is staged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address

import httpx
import pytest
from sqlalchemy.orm import Session as Db

from hearth.config import Settings
from hearth.fabric.ports import GUEST_IFNAME
from hearth.reconcile.reconciler import QUARANTINE
from hearth.store.models import LeaseRow, OwnerKind
from tests.conftest import running_controller
from tests.fabric.test_isolation import arp, ping, rfb_banner, tcp_scan
from tests.live import start_ready

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]
NETWORK = "10.77.0.0/21"  # inside the test's own fabric namespace: 2,045 slots, bridge 10.77.0.1
HIGH = (300, 1500, 2044)  # 10.77.1.46, 10.77.5.222 and the last address of the pool, 10.77.7.254


async def test_high_slots_of_a_21_are_reachable_and_isolated(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(INTERNAL_NETWORK=NETWORK, HEARTH_CHROMIUM="false")
    assert s.pool_size == 2045 and str(s.bridge_ip) == "10.77.0.1"
    bridge, fabric, run = str(s.bridge_ip), s.fabric_netns, asyncio.to_thread
    async with (
        running_controller(s) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
    ):
        svc = ctl.ctl.service

        def hold_all_but_high(db: Db) -> None:
            db.add_all(
                LeaseRow(
                    node_id=s.node_id,
                    fabric=fabric,
                    slot=i,
                    ip=str(svc.ipam.slot(i).ip),
                    session_id=f"{QUARANTINE}h7-{i}",
                    owner_kind=OwnerKind.RECLAIM,  # quarantine leases: the reconciler leaves them alone
                )
                for i in range(s.pool_size)
                if i not in HIGH
            )

        await svc.db.run(hold_all_but_high)
        lives = [await start_ready(http, s, f"high-{i}") for i in range(len(HIGH))]
        assert [live.slot for live in lives] == list(HIGH)
        assert [live.sandbox_ip for live in lives] == ["10.77.1.46", "10.77.5.222", "10.77.7.254"]
        assert [live.netns for live in lives] == [f"{fabric}-s{i}" for i in HIGH]

        for live in lives:  # reachability, both ways, on each high slot
            assert (await run(rfb_banner, fabric, live.sandbox_ip, s.rfb_port)).startswith(b"RFB ")
            assert (await run(tcp_scan, fabric, live.sandbox_ip, [s.agent_port]))[s.agent_port] == "open"
            assert await run(arp, live.netns, GUEST_IFNAME, live.sandbox_ip, bridge), live.netns
            assert await run(ping, live.netns, bridge), live.netns

        a, b, c = lives  # isolation between high slots: L2 (ARP), L3 (ICMP) and TCP, also across /24 boundaries
        for src, dst in ((a, c), (c, b), (b, a)):
            scan = await run(tcp_scan, src.netns, dst.sandbox_ip, [s.agent_port, s.rfb_port])
            assert set(scan.values()) <= {"timeout", "EHOSTUNREACH"}, (src.netns, dst.sandbox_ip, scan)
            assert not await run(ping, src.netns, dst.sandbox_ip), (src.netns, dst.sandbox_ip)
            assert not await run(arp, src.netns, GUEST_IFNAME, src.sandbox_ip, dst.sandbox_ip, peer=True)
        # a high slot cannot claim another's address either (the L2 set pins (port, MAC, address) per slot)
        assert not await run(arp, a.netns, GUEST_IFNAME, c.sandbox_ip, bridge), "slot 300 claimed slot 2044's address"
        assert IPv4Address(c.sandbox_ip) == s.ip_pool_end
