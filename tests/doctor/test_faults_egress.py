"""The doctor's egress hops against a real controller whose uplink leads to a small internet in namespaces of the
test's own (tests/egress/world.py): each fault injected for real, named with its evidence and fix, then repaired.
HEARTH_EGRESS=true, so the one session's plain desktop sandbox is granted a way out by the sandbox manager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from hearth.doctor import Finding, Report, diagnose, egress, host, parts_of
from hearth.doctor.checks import SESSION_STEPS, resolve
from hearth.doctor.context import Context
from hearth.egress import rules
from hearth.errors import HearthError
from hearth.fabric import netlink, nft, nftrun
from hearth.fabric.slot import uplink_outer
from tests.doctor.conftest import Case, live_session, nft_json
from tests.egress import world
from tests.egress.world import World

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
EGRESS_HOPS = ("nat", "egress rules", "resolver", "name resolves")
BUDGET = 30.0  # the hops are under test here, not the doctor's 3 s budget (CI machines run many tests at once)
Check = Callable[[Context], Awaitable[Finding]]


async def report(live: Case) -> Report:
    rep = await diagnose(live.ctl, live.session_id, budget=BUDGET)
    f = rep.first_failure
    print(f"doctor {rep.duration_s:.3f}s: " + (f"[{f.hop}] {f.name}: {f.evidence} — fix: {f.hint}" if f else "ok"))
    return rep


async def check(live: Case, fn: Check, *, ok: bool, session: bool = False, timeout: float = 120.0) -> Finding:
    """One hop's check, as the doctor runs it (the step's function on the doctor's context), until its verdict is
    `ok` — a loaded machine may make a single look run out of time (an nft listing has 1 s): looked at again."""
    parts = parts_of(live.ctl)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ctx = Context(parts, deadline=time.monotonic() + BUDGET)
        if session:
            ctx.target = await resolve(parts, live.ctl.service.records, live.ctl.service.boots, live.session_id)
        try:
            found = await fn(ctx)
        except (HearthError, TimeoutError) as exc:
            found = Finding.bad(f"no answer ({exc})", "")
        print(f"{fn.__name__}: ok={found.ok} {found.evidence} — fix: {found.hint}")
        if found.ok is ok and (ok or found.hint):  # a bad finding of our own making (no answer) has no fix
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{fn.__name__} never gave ok={ok}: {found}"
        await asyncio.sleep(0.25)


async def healthy(live: Case) -> None:
    for fn in (host.nat, egress.egress_rules, egress.resolver, egress.name_resolves):
        await check(live, fn, ok=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def w() -> AsyncIterator[World]:
    built = await asyncio.to_thread(world.build)
    try:
        yield built
    finally:
        await asyncio.to_thread(built.close)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(w: World) -> AsyncIterator[Case]:
    env = {**world.settings_env(w), "HEARTH_EGRESS": "true", "HEARTH_EGRESS_ALLOW": "10.20.0.0/16"}
    async with live_session(**env, OAUTH_FLOW_TIMEOUT="7200") as live:  # the session outlives a slow module
        yield live


class TestEgressHops:
    async def test_healthy_the_sandbox_resolves_through_the_forwarder_and_goes_out(self, live: Case) -> None:
        await healthy(live)
        found = await check(live, egress.name_resolves, ok=True)
        assert f"claude.ai resolves upstream ({world.DNS_IP} from namespace {live.settings.uplink_netns})" in (
            found.evidence
        )
        assert (await check(live, egress.policy_drops, ok=True, session=True)).evidence.startswith("no egress drops")
        names = [c.name for c in (await report(live)).checks]  # the whole diagnosis walks them, in path order
        assert [n for n in names if n in EGRESS_HOPS] == list(EGRESS_HOPS) and names.index("name resolves") < (
            names.index("session")
        )
        conf = live.settings.data_dir / "sandboxes" / live.slot.netns / "resolv.conf"
        assert conf.read_text().startswith(f"nameserver {live.settings.bridge_ip}\n")  # bound at /etc/resolv.conf
        got = await asyncio.to_thread(world.resolve, live.slot, "idp.example.com", live.settings.bridge_ip)
        assert got == ("NOERROR", [world.WEB_IP])
        assert await asyncio.to_thread(world.connect, live.slot, world.WEB_IP, world.WEB_PORT)

    async def test_upstream_resolver_down(self, live: Case, w: World) -> None:
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
            f = await check(live, egress.name_resolves, ok=False)
            assert f"claude.ai does not resolve upstream from namespace {w.host}" in f.evidence
            assert f"{world.DNS_IP}: no answer" in f.evidence
            assert "HEARTH_DNS_UPSTREAM" in f.hint
            got = await asyncio.to_thread(world.resolve, live.slot, "idp.example.com", live.settings.bridge_ip)
            assert got[0] == "SERVFAIL"  # the forwarder says so at once, not a sandbox-side timeout
        finally:
            await nft_json(w.net, {"nftables": [{"delete": {"table": table}}]})
        await healthy(live)

    async def test_resolver_not_answering(self, live: Case) -> None:
        await healthy(live)
        await live.ctl.egress.dns.stop()
        try:
            f = await check(live, egress.resolver, ok=False)
            assert f"the DNS forwarder on {live.settings.bridge_ip}:53 in {live.fabric} does not answer" in f.evidence
            assert "hearth serve" in f.hint
        finally:
            await live.ctl.egress.dns.start()
        await healthy(live)

    async def test_no_masquerade_where_the_uplink_leads(self, live: Case, w: World) -> None:
        await healthy(live)
        table = nft.root_table(live.fabric)
        await nft_json(w.host, {"nftables": [{"delete": {"table": {"family": "ip", "name": table}}}]})
        try:
            f = await check(live, host.nat, ok=False)
            assert f"table ip {table} in namespace {w.host} is missing" in f.evidence
            assert "hearth fabric up" in f.hint
        finally:
            await live.ctl.fabric.up()
        await healthy(live)

    async def test_uplink_missing(self, live: Case, w: World) -> None:
        await healthy(live)

        def cut() -> None:
            with netlink.ns(w.host) as h:
                netlink.delete_link(h, uplink_outer(live.fabric))

        await asyncio.to_thread(cut)
        try:
            f = await check(live, host.nat, ok=False)
            assert "the uplink is missing" in f.evidence and "uplink hearth-up: missing" in f.evidence
            assert "recreates the uplink" in f.hint
        finally:
            await live.ctl.fabric.up()
        await healthy(live)

    async def test_egress_rules_missing(self, live: Case) -> None:
        await healthy(live)
        await nftrun.apply(live.fabric, rules.delete())
        try:
            f = await check(live, egress.egress_rules, ok=False)
            assert f"table inet {rules.TABLE} is missing" in f.evidence and "unguarded" in f.evidence
            assert "hearth serve" in f.hint
        finally:
            await live.ctl.egress.gate.up()  # rebuilt with the grants it holds
        await healthy(live)

    async def test_policy_drops_are_named_with_the_sandbox(self, live: Case) -> None:
        await healthy(live)
        for ip, port in (("169.254.169.254", 80), (world.PRIVATE_BLOCKED, world.WEB_PORT)):
            assert not await asyncio.to_thread(world.connect, live.slot, ip, port, 1.5)
        assert await asyncio.to_thread(world.connect, live.slot, world.PRIVATE_ALLOWED, world.WEB_PORT)
        c = await check(live, egress.policy_drops, ok=False, session=True)
        assert f"sandbox {live.ip} (session {live.session_id}) refused on the way out" in c.evidence
        assert "blocked (private/link-local/metadata/loopback destination)" in c.evidence
        assert "HEARTH_EGRESS_ALLOW" in c.hint
        assert not [s for s in SESSION_STEPS if s.name == "policy drops" and s.on_path]  # an advisory, not the path
        host = await diagnose(live.ctl, budget=BUDGET)
        assert live.session_id in host.check("policy drops").evidence
        metrics = (await live.http.get("/metrics")).text
        assert f'hearth_egress_drops_total{{reason="blocked",sandbox="{live.session_id}"}}' in metrics
