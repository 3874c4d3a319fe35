"""The doctor's egress hops against a real controller whose uplink leads to a small internet in namespaces of the
test's own (tests/egress/world.py): each fault injected for real, named with its evidence and fix, then repaired.
HEARTH_EGRESS=true, so the one session's plain desktop sandbox is granted a way out by the sandbox manager."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hearth.doctor import CheckResult, Report, diagnose
from hearth.egress import rules
from hearth.errors import Hop
from hearth.fabric import netlink, nft
from hearth.fabric.slot import uplink_outer
from tests.doctor.conftest import Live, first, live_session, nft_json
from tests.egress import world
from tests.egress.world import World

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
EGRESS_HOPS = ("nat", "egress rules", "resolver", "name resolves")
BUDGET = 30.0  # the hops are under test here, not the doctor's 3 s budget (CI machines run many tests at once)


async def report(live: Live) -> Report:
    rep = await diagnose(live.ctl, live.session_id, budget=BUDGET)
    f = rep.first_failure
    print(f"doctor {rep.duration_s:.3f}s: " + (f"[{f.hop}] {f.name}: {f.evidence} — fix: {f.hint}" if f else "ok"))
    return rep


async def named(live: Live, name: str, timeout: float = 90.0) -> CheckResult:
    """The first failure once the doctor names `name` first (a loaded machine may time another hop out: retried)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        f = first(await report(live))
        if f.name == name:
            return f  # type: ignore[no-any-return]
        assert asyncio.get_running_loop().time() < deadline, f"the doctor never named {name}: {f}"
        await asyncio.sleep(0.25)


def slow(c: CheckResult) -> bool:
    """Another hop's check that only ran out of its time (a loaded machine), not one of the hops under test."""
    return c.name not in EGRESS_HOPS and c.evidence.startswith("no answer within")


async def healthy(live: Live, timeout: float = 90.0) -> Report:
    """Until the whole path passes (advisories may still fail)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rep = await report(live)
        failed = [c for c in rep.checks if c.failed and c.name not in ("pool", "policy drops") and not slow(c)]
        if not failed:
            return rep
        assert asyncio.get_running_loop().time() < deadline, f"path not healthy after {timeout}s: {failed[0]}"
        await asyncio.sleep(0.25)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def w() -> AsyncIterator[World]:
    built = await asyncio.to_thread(world.build)
    try:
        yield built
    finally:
        await asyncio.to_thread(built.close)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(w: World) -> AsyncIterator[Live]:
    async with live_session(**world.settings_env(w), HEARTH_EGRESS_ALLOW="10.20.0.0/16") as live:
        yield live


class TestEgressHops:
    async def test_healthy_the_sandbox_resolves_through_the_forwarder_and_goes_out(self, live: Live) -> None:
        rep = await healthy(live)
        for name in ("nat", "egress rules", "resolver", "name resolves"):
            assert rep.check(name).ok is True, rep.check(name)
        assert "claude.ai resolves upstream" in rep.check("name resolves").evidence
        assert rep.check("policy drops").ok is True
        conf = live.settings.data_dir / "sandboxes" / live.slot.netns / "resolv.conf"
        assert conf.read_text().startswith(f"nameserver {live.settings.bridge_ip}\n")  # bound at /etc/resolv.conf
        got = await asyncio.to_thread(world.resolve, live.slot, "idp.example.com", live.settings.bridge_ip)
        assert got == ("NOERROR", [world.WEB_IP])
        assert await asyncio.to_thread(world.connect, live.slot, world.WEB_IP, world.WEB_PORT)

    async def test_upstream_resolver_down(self, live: Live, w: World) -> None:
        await healthy(live)
        table = {"family": "inet", "name": "h1dnsdown"}
        drop = {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 53}}
        await nft_json(w.net, {"nftables": [
            {"add": {"table": table}},
            {"add": {"chain": {**table, "table": "h1dnsdown", "name": "in", "type": "filter", "hook": "input",
                               "prio": 0, "policy": "accept"}}},
            {"add": {"rule": {"family": "inet", "table": "h1dnsdown", "chain": "in", "expr": [drop, {"drop": None}]}}},
        ]})  # fmt: skip
        try:
            f = await named(live, "name resolves")
            assert f.hop is Hop.DNS, f
            assert f"claude.ai does not resolve upstream from namespace {w.host}" in f.evidence
            assert f"{world.DNS_IP}: no answer" in f.evidence
            assert "HEARTH_DNS_UPSTREAM" in f.hint
            got = await asyncio.to_thread(world.resolve, live.slot, "idp.example.com", live.settings.bridge_ip)
            assert got[0] == "SERVFAIL"  # the forwarder says so at once, not a sandbox-side timeout
        finally:
            await nft_json(w.net, {"nftables": [{"delete": {"table": table}}]})
        await healthy(live)

    async def test_resolver_not_answering(self, live: Live) -> None:
        await healthy(live)
        await live.ctl.egress.dns.stop()
        try:
            f = await named(live, "resolver")
            assert f.hop is Hop.DNS, f
            assert f"the DNS forwarder on {live.settings.bridge_ip}:53 in {live.fabric} does not answer" in f.evidence
            assert "hearth serve" in f.hint
        finally:
            await live.ctl.egress.dns.start()
        await healthy(live)

    async def test_no_masquerade_where_the_uplink_leads(self, live: Live, w: World) -> None:
        await healthy(live)
        table = nft.root_table(live.fabric)
        await nft_json(w.host, {"nftables": [{"delete": {"table": {"family": "ip", "name": table}}}]})
        try:
            f = await named(live, "nat")
            assert f.hop is Hop.NAT, f
            assert f"table ip {table} in namespace {w.host} is missing" in f.evidence
            assert "hearth fabric up" in f.hint
        finally:
            await live.ctl.fabric.up()
        await healthy(live)

    async def test_uplink_missing(self, live: Live, w: World) -> None:
        await healthy(live)

        def cut() -> None:
            with netlink.ns(w.host) as h:
                netlink.delete_link(h, uplink_outer(live.fabric))

        await asyncio.to_thread(cut)
        try:
            f = await named(live, "nat")
            assert f.hop is Hop.NAT, f
            assert "the uplink is missing" in f.evidence and "uplink hearth-up: missing" in f.evidence
            assert "recreates the uplink" in f.hint
        finally:
            await live.ctl.fabric.up()
        await healthy(live)

    async def test_egress_rules_missing(self, live: Live) -> None:
        await healthy(live)
        await nft.apply(live.fabric, rules.delete())
        try:
            f = await named(live, "egress rules")
            assert f.hop is Hop.EGRESS, f
            assert f"table inet {rules.TABLE} is missing" in f.evidence and "unguarded" in f.evidence
            assert "hearth serve" in f.hint
        finally:
            await live.ctl.egress.gate.up()  # rebuilt with the grants it holds
        await healthy(live)

    async def test_policy_drops_are_named_with_the_sandbox(self, live: Live) -> None:
        await healthy(live)
        for ip, port in (("169.254.169.254", 80), (world.PRIVATE_BLOCKED, world.WEB_PORT)):
            assert not await asyncio.to_thread(world.connect, live.slot, ip, port, 1.5)
        assert await asyncio.to_thread(world.connect, live.slot, world.PRIVATE_ALLOWED, world.WEB_PORT)
        rep = await report(live)
        c = rep.check("policy drops")
        assert c.ok is False and c.hop is Hop.EGRESS, c
        assert f"sandbox {live.ip} (session {live.session_id}) refused on the way out" in c.evidence
        assert "blocked (private/link-local/metadata/loopback destination)" in c.evidence
        assert "HEARTH_EGRESS_ALLOW" in c.hint
        assert rep.first_failure is None or rep.first_failure.name != "policy drops"  # an advisory, not the path
        host = await diagnose(live.ctl, budget=BUDGET)
        assert live.session_id in host.check("policy drops").evidence
        metrics = (await live.http.get("/metrics")).text
        assert f'hearth_egress_drops_total{{reason="blocked",sandbox="{live.session_id}"}}' in metrics
