"""Unit tests of the doctor's runner, report and pure checks (no root, no namespaces)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from hearth.config import Settings, load_settings
from hearth.doctor import Parts, Report, config_report, diagnose, diagnose_session, render
from hearth.doctor.checks import HOST_STEPS, SESSION_STEPS
from hearth.doctor.context import Context, Step, local_api_url, run_steps
from hearth.doctor.host import _added, _drops, _masquerades, config
from hearth.doctor.records import StoreRecords
from hearth.doctor.report import CheckResult, Finding
from hearth.errors import FabricError, HearthError, Hop
from hearth.fabric import nft
from hearth.sandbox.netns import NetnsDriver
from hearth.store.db import Database


def settings(**env: str) -> Settings:
    return load_settings({"HEARTH_FABRIC_NETNS": "hearth-tunit0", "HEARTH_DATA_DIR": "/nonexistent", **env}, None)


def ctx(verdict: bool = False, budget: float = 5.0) -> Context:
    return Context(Parts(settings(), verdict=verdict), deadline=time.monotonic() + budget)


def step(name: str, hop: Hop, finding: Finding | None = None, **kw: object) -> Step:
    async def fn(_ctx: Context) -> Finding:
        return finding or Finding.good(f"{name} fine")

    return Step(name, hop, fn, kw.pop("timeout", 1.0), **kw)  # type: ignore[arg-type]


async def test_first_failure_is_the_first_failing_step_and_dependents_are_not_run() -> None:
    steps = [
        step("fabric", Hop.FABRIC),
        step("link", Hop.LINK, Finding.bad("hearth-v0 is DOWN", "ip link set hearth-v0 up"), needs=("fabric",)),
        step("arp", Hop.ARP, Finding.bad("no reply", "…"), needs=("link",)),
        step("vnc", Hop.VNC, needs=("arp",)),
        step("driver", Hop.DRIVER, Finding.bad("dead", "restart")),
    ]
    results = await run_steps(ctx(), steps)
    report = Report(results, 0.1, "sid")
    assert [c.ok for c in results] == [True, False, None, None, False]
    assert report.first_failure is results[1] and report.first_failure.hop is Hop.LINK
    assert "needs link" in results[2].evidence and "needs arp" in results[3].evidence
    assert report.exit_code == 1 and not report.ok
    err = report.error()
    assert isinstance(err, HearthError) and err.hop is Hop.LINK
    assert err.reason == "[link] link: hearth-v0 is DOWN — fix: ip link set hearth-v0 up"


async def test_timeouts_errors_and_skips_become_results() -> None:
    async def slow(_ctx: Context) -> Finding:
        await asyncio.sleep(5)
        return Finding.good("never")

    async def broken(_ctx: Context) -> Finding:
        raise FabricError(Hop.FABRIC, "namespace gone", "run `hearth fabric up`")

    async def crashing(_ctx: Context) -> Finding:
        raise KeyError("x")

    steps = [
        Step("slow", Hop.AGENT, slow, 0.05, timeout_hint="the agent is hung"),
        Step("broken", Hop.BRIDGE, broken, 1.0),
        Step("crashing", Hop.VNC, crashing, 1.0),
        Step("skipped", Hop.NAT, slow, 1.0, skip=lambda _c: "egress is off"),
        Step("moved", Hop.FABRIC, step("x", Hop.FABRIC, Finding.bad("bad", "fix", hop=Hop.CONFIG)).fn, 1.0),
    ]
    slow_r, broken_r, crash_r, skip_r, moved_r = await run_steps(ctx(), steps)
    assert slow_r.ok is False and "no answer within" in slow_r.evidence and slow_r.hint == "the agent is hung"
    assert broken_r.ok is False and broken_r.hop is Hop.BRIDGE and broken_r.hint == "run `hearth fabric up`"
    assert crash_r.ok is False and "KeyError" in crash_r.evidence
    assert skip_r.ok is None and "egress is off" in skip_r.evidence
    assert moved_r.hop is Hop.CONFIG  # a finding may name another hop than its step's


async def test_a_step_slow_once_is_asked_again_before_it_is_judged() -> None:
    """A starved step (a busy host) gets one more try with twice its slice; a hung one is still judged broken."""
    calls: list[int] = []

    async def starved_once(_ctx: Context) -> Finding:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(5)
        return Finding.good("answered")

    async def hung(_ctx: Context) -> Finding:
        await asyncio.sleep(5)
        return Finding.good("never")

    starved, stuck = await run_steps(
        ctx(), [Step("starved", Hop.NAT, starved_once, 0.05), Step("hung", Hop.NAT, hung, 0.05)]
    )
    assert starved.ok is True and starved.evidence == "answered" and len(calls) == 2
    assert stuck.ok is False and stuck.evidence.startswith("no answer within 0.10s")


async def test_budget_and_verdict_mode() -> None:
    results = await run_steps(ctx(budget=0.0), [step("a", Hop.CONFIG)])
    assert results[0].ok is None and "budget" in results[0].evidence

    async def slow(_ctx: Context) -> Finding:
        await asyncio.sleep(5)
        return Finding.good("never")

    cut = await run_steps(ctx(budget=0.2), [Step("rfb", Hop.RFB, slow, 1.0)])
    assert cut[0].ok is None and "budget" in cut[0].evidence  # cut short by the budget: no verdict
    steps = [step("path", Hop.LINK), step("pool", Hop.FABRIC, Finding.bad("full", "widen"), on_path=False)]
    assert [r.name for r in await run_steps(ctx(verdict=True), steps)] == ["path"]
    assert [r.name for r in await run_steps(ctx(), steps)] == ["path", "pool"]


def test_report_json_and_rendering() -> None:
    ok = CheckResult(Hop.BRIDGE, "bridge", True, "br0 UP with 192.168.100.1/24")
    bad = CheckResult(Hop.ARP, "neighbour", False, "no ARP reply; kernel neighbour INCOMPLETE", "arp_ignore=0")
    skipped = CheckResult(Hop.VNC, "vnc", None, "not checked: needs neighbour")
    report = Report([ok, bad, skipped], 0.42, "sid", {"status": "ready", "driver": "netns", "slot": 0})
    data = json.loads(json.dumps(report.as_dict()))
    assert data["session_id"] == "sid" and data["ok"] is False and data["duration_s"] == 0.42
    assert [c["ok"] for c in data["checks"]] == [True, False, None]
    assert data["first_failure"]["hop"] == "arp" and data["first_failure"]["hint"] == "arp_ignore=0"
    assert set(data["checks"][0]) >= {"hop", "name", "ok", "evidence", "hint"}
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    assert "first failure: [arp] neighbour" in text and "arp_ignore=0" in text and "INCOMPLETE" in text
    healthy = Report([ok], 0.1)
    assert (
        healthy.as_dict()["first_failure"] is None and healthy.exit_code == 0 and "session_id" not in healthy.as_dict()
    )
    render(healthy, console)
    assert "all checks passed" in console.export_text()
    assert config_report(["BRIDGE_IP: invalid"]).first_failure is not None
    long = CheckResult(
        Hop.LINK, "link", False, "hearth-v0 is administratively DOWN (hearth-v0: DOWN, carrier no)", "up"
    )
    assert long.error().reason == "[link] link: hearth-v0 is administratively DOWN — fix: up"


def test_path_order() -> None:
    names = [s.name for s in SESSION_STEPS]
    order = ["config", "fabric namespace", "bridge", "forwarding", "nat", "firewall", "session", "lease", "driver"]
    order += ["link", "neighbour", "address conflict", "icmp", "agent", "vnc", "rfb", "gateway"]
    assert [n for n in names if n in order] == order
    assert names[-1] == "pool" and names.index("port isolation") > names.index("gateway")
    assert all(not s.on_path for s in SESSION_STEPS[names.index("gateway") + 1 :])
    assert [s.name for s in HOST_STEPS][:6] == order[:6]


async def test_config_check_names_the_legacy_variable(tmp_path: Path) -> None:
    deadline = time.monotonic() + 5
    c = Context(Parts(settings(), environ={"VM_IP_POOL_START": "192.168.100.2"}, env_file=None), deadline)
    found = await config(c)
    assert not found.ok and "VM_IP_POOL_START" in found.evidence
    assert "rename VM_IP_POOL_START to IP_POOL_START in the environment" in found.hint
    dotenv = tmp_path / ".env"
    dotenv.write_text("VM_BRIDGE_IP=192.168.100.1\n")
    c = Context(Parts(settings(), environ={}, env_file=dotenv), deadline)
    found = await config(c)
    assert not found.ok and "rename VM_BRIDGE_IP to BRIDGE_IP in .env" in found.hint
    assert (await config(Context(Parts(settings(), environ={}, env_file=None), deadline))).ok


def test_nft_readers() -> None:
    s = settings(HEARTH_EGRESS="true")
    wanted = nft.fabric_ruleset(s)
    loop_ctx = Context(Parts(s), 0.0)
    assert _masquerades(wanted, loop_ctx) == ["masquerade 192.168.100.0/22 oifname hearth-up"]
    without = [o for o in wanted if not ("rule" in o and o["rule"]["chain"] == "postrouting")]
    assert _masquerades(without, loop_ctx) == []
    foreign: list[dict[str, Any]] = [
        {"table": {"family": "inet", "name": "testfw"}},
        {"chain": {"family": "inet", "table": "testfw", "name": "fwd", "hook": "forward", "policy": "drop"}},
        {"rule": {"family": "inet", "table": "testfw", "chain": "fwd", "handle": 3, "expr": [{"reject": None}]}},
    ]
    assert _drops(foreign) == [
        "inet testfw: chain fwd (hook forward) policy drop",
        "inet testfw: chain fwd rule 3 reject",
    ]


def test_drops_added_to_our_own_tables_of_a_22() -> None:
    """The firewall step compares hearth's tables as listed with the built ones by content (a /22's table bridge
    hearth has ~4,100 objects, a counter per port): as built, nothing is added; a drop rule someone put into either
    table is named; the kernel's handles and counter values are not a difference."""
    s = settings(INTERNAL_NETWORK="192.168.100.0/22")
    l2, inet = nft.l2_ruleset(s), nft.fabric_ruleset(s)
    assert len(l2) > 4000
    listed = [{k: {**v, "handle": i, "packets": 7} for k, v in o.items()} for i, o in enumerate(reversed(l2))]
    assert _added(listed, l2) == [] and _added(inet, inet) == []
    base = {"family": "bridge", "table": "hearth"}
    foreign = {"rule": {**base, "chain": "prerouting", "handle": 99, "expr": [{"counter": None}, {"drop": None}]}}
    assert _drops(_added([*listed, foreign], l2)) == ["bridge hearth: chain prerouting rule ? drop"]
    policy = {"chain": {**base, "name": "sneaky", "hook": "forward", "prio": 0, "policy": "drop"}}
    assert _drops(_added([*inet, policy], inet)) == ["bridge hearth: chain sneaky (hook forward) policy drop"]


def test_local_api_url() -> None:
    assert local_api_url(settings(HEARTH_API_LISTEN="0.0.0.0:4000")) == "http://127.0.0.1:4000"
    assert local_api_url(settings(HEARTH_API_LISTEN="127.0.0.1:4100")) == "http://127.0.0.1:4100"


async def test_host_diagnosis_without_a_fabric_and_unknown_session_verdict(tmp_path: Path) -> None:
    s = settings(HEARTH_FABRIC_NETNS="hearth-tnone00", HEARTH_DATA_DIR=str(tmp_path))
    db = Database(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        records = StoreRecords(s, db, NetnsDriver(s))  # what `hearth doctor` reads: the store only
        report = await diagnose(Parts(s, records=records, specs=records, environ={}, env_file=None))
        first = report.first_failure
        assert first is not None and first.hop is Hop.FABRIC and first.name == "fabric namespace"
        assert "hearth fabric up" in first.hint
        assert report.check("bridge").ok is None and report.check("pool").ok is True
        assert "warm pool: not known here" in report.check("pool").evidence
        assert await diagnose_session(Parts(s, records=records, specs=records), "no-such-session") is None
    finally:
        db.dispose()


def test_cli_reads_settings_despite_legacy_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from hearth.cli.doctor import lenient_settings

    monkeypatch.setenv("HEARTH_FABRIC_NETNS", "hearth-tcli000")
    monkeypatch.setenv("VM_IP_POOL_START", "192.168.100.9")
    s, problems = lenient_settings(env_file=None)
    assert s is not None and s.fabric_netns == "hearth-tcli000"
    assert any("VM_IP_POOL_START" in p for p in problems)
    monkeypatch.setenv("BRIDGE_IP", "not-an-ip")
    s, problems = lenient_settings(env_file=None)
    assert s is None and any("BRIDGE_IP" in p for p in problems)
