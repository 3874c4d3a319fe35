"""Fault injection: for each fault, a live fabric and session, the fault made for real, and the doctor must name the
right hop as the *first* failure with the right fix. Each test repairs its fault; the next one starts by waiting for a
healthy path, so a repair that did not work fails loudly.

One controller and one session for the module (faults that need other settings — egress, a one-address pool — are in
test_faults_capacity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from hearth.doctor import diagnose_session
from hearth.errors import HearthError, Hop
from hearth.fabric import netlink
from hearth.fabric.ports import GUEST_IFNAME
from hearth.sandbox.procs import pids_in_netns
from hearth.store.models import SessionRow
from tests.doctor.conftest import (
    Case,
    assert_verdict,
    bind_blocker,
    first,
    in_ns,
    is_agent,
    is_vnc_server,
    live_session,
    nft_json,
    resume,
    sandbox_proc,
    write_sysctl,
)
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live() -> AsyncIterator[Case]:
    async with live_session(IP_POOL_END="192.168.100.3") as live:
        yield live


class TestPathFaults:
    async def test_healthy_path_api_and_cli(self, live: Case) -> None:
        rep = await live.wait_healthy()
        assert rep.ok and rep.first_failure is None
        names = [c.name for c in rep.checks]
        assert names.index("link") < names.index("neighbour") < names.index("icmp") < names.index("vnc")
        assert rep.check("gateway").ok is True and "101" in rep.check("gateway").evidence
        assert rep.check("nat").ok is None  # egress off
        assert await diagnose_session(live.ctl, live.session_id) is None

        body = (await live.http.get(f"/api/diagnostics/{live.session_id}")).json()
        assert body["ok"] is True and body["first_failure"] is None and body["session_id"] == live.session_id
        host = (await live.http.get("/api/diagnostics")).json()
        assert host["ok"] is True and {c["name"] for c in host["checks"]} >= {"bridge", "firewall", "pool"}
        async with httpx.AsyncClient(base_url=live.run.base_url) as anon:
            assert (await anon.get("/api/diagnostics")).status_code == 401
        assert (await live.http.get("/api/diagnostics/no-such-session")).status_code == 404

        code, out = await asyncio.to_thread(live.cli, "--session", live.session_id)
        assert code == 0, out
        assert out["ok"] is True and out["checks"][-1]["name"] == "pool"
        gw = next(c for c in out["checks"] if c["name"] == "gateway")
        assert gw["ok"] is True, gw  # token requested over the API with HEARTH_API_KEYS

    async def test_legacy_env_name(self, live: Case, monkeypatch: pytest.MonkeyPatch) -> None:
        await live.wait_healthy()
        monkeypatch.setenv("VM_IP_POOL_START", "192.168.100.2")
        f = first(await live.report())
        assert f.hop is Hop.CONFIG and f.name == "config"
        assert "VM_IP_POOL_START" in f.evidence
        assert "rename VM_IP_POOL_START to IP_POOL_START" in f.hint
        code, out = await asyncio.to_thread(
            live.cli, "--session", live.session_id, extra_env={"VM_IP_POOL_START": "192.168.100.2"}
        )
        assert code == 1 and out["first_failure"]["hop"] == "config", out
        assert "IP_POOL_START" in out["first_failure"]["hint"]

    async def test_bridge_on_another_subnet(self, live: Case) -> None:
        await live.wait_healthy()
        s = live.settings

        def readdress(h: Any, old: str, new: str) -> None:
            br = netlink.link_index(h, s.bridge_device)
            ip, plen = old.split("/")
            h.addr("del", index=br, address=ip, prefixlen=int(plen))
            ip, plen = new.split("/")
            h.addr("add", index=br, address=ip, prefixlen=int(plen))

        await in_ns(live.fabric, lambda h: readdress(h, "192.168.100.1/22", "192.168.0.1/16"))
        try:
            f = first(await live.report())
            assert f.hop is Hop.BRIDGE and f.name == "bridge"
            assert "192.168.0.1/16" in f.evidence and "192.168.100.1/22" in f.evidence
            assert "hearth fabric up" in f.hint and f"addr add 192.168.100.1/22 dev {s.bridge_device}" in f.hint
            # the verdict the service attaches to failures names the same hop
            reason = await live.ctl.service.boots.explain(live.session_id, HearthError(Hop.VNC, "relay failed"))
            assert reason.startswith("[bridge]"), reason
        finally:
            await in_ns(live.fabric, lambda h: readdress(h, "192.168.0.1/16", "192.168.100.1/22"))

    @pytest.mark.parametrize("family", ["inet", "bridge"])
    async def test_firewall_drops_in_the_fabric(self, live: Case, family: str) -> None:
        await live.wait_healthy()
        hook = "forward" if family == "inet" else "input"
        table = {"family": family, "name": "testfw"}
        chain = {**table, "table": "testfw", "name": hook, "type": "filter", "hook": hook, "prio": -10}
        if family == "inet":  # forward policy drop: egress and any routed traffic
            objs = [{"add": {"table": table}}, {"add": {"chain": {**chain, "policy": "drop"}}}]
        else:  # a bridge-family rule dropping every frame the bridge delivers to the fabric's own stack
            rule = {"family": "bridge", "table": "testfw", "chain": hook, "expr": [{"counter": None}, {"drop": None}]}
            objs = [
                {"add": {"table": table}},
                {"add": {"chain": {**chain, "policy": "accept"}}},
                {"add": {"rule": rule}},
            ]
        name = {k: v for k, v in table.items() if k != "name"} | {"name": "testfw"}
        await nft_json(live.fabric, {"nftables": objs})
        try:
            f = first(await live.report())
            assert f.hop is Hop.FORWARDING and f.name == "firewall"
            assert f"{family} testfw" in f.evidence
            assert f"nft delete table {family} testfw" in f.hint
            if family == "bridge":  # it really cuts the path: the verdict for the session says so
                assert_verdict(await diagnose_session(live.ctl, live.session_id), Hop.FORWARDING)
        finally:
            await nft_json(live.fabric, {"nftables": [{"delete": {"table": name}}]})

    async def test_sandbox_link_down(self, live: Case) -> None:
        await live.wait_healthy()
        port = live.slot.veth_host

        def set_state(h: Any, state: str) -> None:
            h.link("set", index=netlink.link_index(h, port), state=state)

        await in_ns(live.fabric, lambda h: set_state(h, "down"))
        try:
            rep = await live.report()
            f = first(rep)
            assert f.hop is Hop.LINK and f.name == "link" and "DOWN" in f.evidence
            assert f"link set {port} up" in f.hint
            for later in ("neighbour", "icmp", "agent", "vnc", "rfb", "gateway"):
                assert rep.check(later).ok is None, rep.check(later)  # not run: the link is the cause
            # the gateway's 4502 close reason carries the doctor's verdict
            code, reason = await live.viewer_close()
            assert code == 4502 and reason.startswith("[link]"), (code, reason)
            assert f"link set {port} up" in reason  # the fix reaches the viewer
        finally:
            await in_ns(live.fabric, lambda h: set_state(h, "up"))

    async def test_sandbox_link_detached(self, live: Case) -> None:
        await live.wait_healthy()
        port, br = live.slot.veth_host, live.settings.bridge_device

        def detach(h: Any) -> None:
            h.link("set", index=netlink.link_index(h, port), master=0)

        def attach(h: Any) -> None:
            idx = netlink.link_index(h, port)
            h.link("set", index=idx, master=netlink.link_index(h, br))
            h.brport("set", index=idx, isolated=1)

        await in_ns(live.fabric, detach)
        try:
            f = first(await live.report())
            assert f.hop is Hop.LINK and f.name == "link"
            assert f"not on bridge {br}" in f.evidence and "master: none" in f.evidence
            assert f"link set {port} master {br}" in f.hint
        finally:
            await in_ns(live.fabric, attach)

    async def test_guest_ignores_arp(self, live: Case) -> None:
        await live.wait_healthy()
        key = f"net/ipv4/conf/{GUEST_IFNAME}/arp_ignore"
        await write_sysctl(live.slot.netns, key, "8")

        def forget(h: Any) -> None:  # the fabric's cached entry would hide the fault for up to a minute
            with contextlib.suppress(Exception):
                h.neigh("del", dst=live.ip, ifindex=netlink.link_index(h, live.settings.bridge_device))

        await in_ns(live.fabric, forget)
        try:
            rep = await live.report()
            f = first(rep)
            assert f.hop is Hop.ARP and f.name == "neighbour"
            assert "no ARP reply" in f.evidence and live.ip in f.evidence
            assert f"sysctl -w net.ipv4.conf.{GUEST_IFNAME}.arp_ignore=0" in f.hint
            assert rep.check("agent").ok is None and rep.check("link").ok is True
        finally:
            await write_sysctl(live.slot.netns, key, "0")

    async def test_second_host_claims_the_sandbox_ip(self, live: Case) -> None:
        await live.wait_healthy()
        impostor_ns, veth = f"{live.fabric}-x{secrets.token_hex(2)}", f"himp{secrets.token_hex(3)}"
        mac = "02:aa:00:00:00:01"
        await asyncio.to_thread(netlink.create_netns, impostor_ns)
        try:

            def plug(h: Any) -> None:
                h.link(
                    "add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": impostor_ns, "address": mac}
                )
                idx = netlink.link_index(h, veth)
                h.link("set", index=idx, master=netlink.link_index(h, live.settings.bridge_device), state="up")

            def configure(h: Any) -> None:
                idx = netlink.link_index(h, "eth0")
                h.addr("add", index=idx, address=live.ip, prefixlen=live.slot.prefixlen)
                h.link("set", index=idx, state="up")

            await in_ns(live.fabric, plug)
            await in_ns(impostor_ns, configure)
            # Layer 2 is pinned (table bridge hearth): the impostor's answers never reach the fabric, so there is no
            # conflict on the path — the doctor reports the attempt instead.
            rep = await live.report()
            f = first(rep)
            assert f.hop is Hop.ARP and f.name == "layer 2", f
            assert "spoofing attempt seen from a port hearth did not name" in f.evidence, f
            assert f.data["unnamed"]["arp_spoof"] >= 1 and f.data["arp_spoof"] == 0, f  # not this sandbox's port
            assert rep.check("address conflict").ok is True and mac not in rep.check("address conflict").evidence
        finally:
            await asyncio.to_thread(netlink.remove_netns, impostor_ns)

            def forget(h: Any) -> None:
                with contextlib.suppress(Exception):
                    h.neigh("del", dst=live.ip, ifindex=netlink.link_index(h, live.settings.bridge_device))

            await in_ns(live.fabric, forget)

    async def test_agent_stopped(self, live: Case) -> None:
        await live.wait_healthy()
        agent = await sandbox_proc(live, is_agent)
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            rep = await live.report()
            f = first(rep)
            assert f.hop is Hop.AGENT and f.name == "agent", f
            assert f"process {agent.pid} is stopped" in f.evidence
            assert f"kill -CONT {agent.pid}" in f.hint
            assert rep.check("driver").ok is True and rep.check("vnc").ok is True  # the rest of the sandbox lives
        finally:
            resume(agent.pid)

    async def test_vnc_server_killed(self, live: Case) -> None:
        await live.wait_healthy()
        agent = await sandbox_proc(live, is_agent)
        vnc = await sandbox_proc(live, is_vnc_server)
        blocker = None
        os.kill(agent.pid, signal.SIGSTOP)  # no restart while we take the port away
        try:
            os.kill(vnc.pid, signal.SIGKILL)
            blocker = await asyncio.to_thread(bind_blocker, live.slot.netns, live.ip, live.settings.rfb_port)
            resume(agent.pid)  # the agent answers again, but every VNC server it restarts finds the port taken
            rep = await live.report()
            f = first(rep)
            assert f.hop is Hop.VNC and f.name == "vnc", f
            program = "Xvnc" if vnc.comm == "Xvnc" else "x11vnc"
            assert "connection refused" in f.evidence and f"agent reports {program}" in f.evidence
            assert f"{program} is not listening" in f.hint and f"port {live.settings.rfb_port}" in f.hint
            assert rep.check("agent").ok is True and rep.check("rfb").ok is None
        finally:
            resume(agent.pid)
            if blocker is not None:
                blocker.close()

    async def test_driver_process_killed(self, live: Case, monkeypatch: pytest.MonkeyPatch) -> None:
        """Last in the class: the sandbox does not come back."""
        await live.wait_healthy()

        async def no_watchdog() -> int:
            return 0  # keep the housekeeping from ending the session before the doctor looks

        monkeypatch.setattr(live.ctl.service.housekeeping, "check_alive", no_watchdog)
        row = await live.ctl.db.run(lambda db: db.get(SessionRow, live.session_id))
        assert row is not None and row.pid
        # Every process of the sandbox (its launcher's group alone no longer takes the sandbox down: sandboxes run
        # on their own, so that they outlive the controller).
        for pid in pids_in_netns(live.slot.netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        spec = live.ctl.service.boots.spec(live.session_id, live.slot)

        async def gone() -> bool:
            return not await live.ctl.driver.alive(spec)

        await eventually(gone, 20, "the sandbox gone after SIGKILL")
        rep = await live.report()
        f = first(rep)
        assert f.hop is Hop.DRIVER and f.name == "driver", f
        assert "not running" in f.evidence
        assert "agent.log" in f.hint and "start a new one" in f.hint
        assert rep.check("link").ok is True  # the network is intact: the sandbox itself is gone
        assert_verdict(await diagnose_session(live.ctl, live.session_id), Hop.DRIVER)
