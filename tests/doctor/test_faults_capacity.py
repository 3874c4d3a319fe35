"""Fault injection with egress on and a one-address pool: the masquerade rule deleted (hop nat) and the pool
exhausted by the one session (hop fabric, an advisory that never explains a session's failure)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hearth.doctor import diagnose_session
from hearth.errors import Hop
from tests.doctor.conftest import Case, first, live_session, nft_json, nft_list
from tests.egress import world
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live() -> AsyncIterator[Case]:
    """Egress on (NAT and DNS on the path: the uplink leads to the small internet of tests/egress/world.py, in
    namespaces of the test's own) and a pool of one address, held by the one session."""
    w = await asyncio.to_thread(world.build)
    try:
        env = world.settings_env(w)
        async with live_session(**env, IP_POOL_START="192.168.100.2", IP_POOL_END="192.168.100.2") as live:
            yield live
    finally:
        await asyncio.to_thread(w.close)


class TestCapacityAndNat:
    async def test_pool_exhausted(self, live: Case) -> None:
        rep = await live.wait_healthy()
        f = first(rep)
        assert f.hop is Hop.FABRIC and f.name == "pool", f
        assert "1/1 addresses" in f.evidence
        assert "widen IP_POOL_START..IP_POOL_END" in f.hint
        assert rep.check("nat").ok is True

        # a full pool never explains a session (asked again while a step merely ran out of its time on a loaded
        # host: one of the walk's probes answering late is not the answer this checks)
        async def unexplained() -> bool | None:
            return True if await diagnose_session(live.ctl, live.session_id) is None else None

        assert await eventually(unexplained, 60, "a session the full pool does not explain")
        host = (await live.http.get("/api/diagnostics")).json()
        failed = [c["name"] for c in host["checks"] if c["ok"] is False]
        # the host's `provider certificate` check shakes hands with a real provider's host (api.anthropic.com): the
        # test's small internet has no TLS server for it, so offline it fails too; everything else passes but the pool
        assert [name for name in failed if name != "provider certificate"] == ["pool"], host
        metrics = (await live.http.get("/metrics")).text
        assert 'hearth_doctor_failures_total{hop="fabric"}' in metrics

    async def test_masquerade_rule_missing(self, live: Case) -> None:
        await live.wait_healthy()
        items = await nft_list(live.fabric, "table", "inet", "hearth")
        handles = [
            i["rule"]["handle"]
            for i in items
            if "rule" in i and i["rule"]["chain"] == "postrouting" and any("masquerade" in e for e in i["rule"]["expr"])
        ]
        assert handles, items
        rule = {"family": "inet", "table": "hearth", "chain": "postrouting", "handle": handles[0]}
        await nft_json(live.fabric, {"nftables": [{"delete": {"rule": rule}}]})
        try:
            f = first(await live.report())
            assert f.hop is Hop.NAT and f.name == "nat", f
            assert "no masquerade rule for 192.168.100.0/22" in f.evidence
            assert "hearth fabric up" in f.hint and "masquerade" in f.hint
        finally:
            await live.ctl.fabric.up()  # converges table inet hearth back to the settings
        rep = await live.wait_healthy()
        assert rep.check("nat").ok is True
