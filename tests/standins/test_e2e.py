"""The product's main path, offline: for claude_code, codex, gemini_cli (the pinned real CLIs) and the example
provider, each sign-in mode their definition declares, through a real controller whose fabric's uplink leads into
the internet stand-in (hearth/standins/internet.py) — DNS through the fabric's forwarder, TLS against
HEARTH_EXTRA_CA_CERTS, the person in Debian's Chromium (Playwright): in remote_browser mode a click on the
provider's "Authorize" button drawn in the viewer (noVNC pointer input), in direct mode their own browser on the
provider's page and the viewer page (hearth/standins/e2e.py). The controller runs HEARTH_EGRESS_POLICY=provider:
the sign-ins need nothing beyond their definitions' `egress_domains`, and a hostile page in a sign-in sandbox is
refused the metadata address, the host, another sandbox and a foreign name, each refusal counted in /metrics.
One stand-in and one controller for the module."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from hearth.fabric.dial import call_in_netns
from hearth.fabric.slot import slot_for
from hearth.guest import clis
from hearth.providers.model import SigninMode
from hearth.providers.registry import load
from hearth.standins.e2e import CHROMIUM, STATES, TOKEN_ENDPOINTS, Run, e2e_run, sign_in
from hearth.standins.inetweb import ExampleServer
from hearth.standins.internet import EXAMPLE_IP, HOST_IP, PERSON_IP

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.sqlite_pass,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh"),
]
CASES = [(p.name, m) for p in load().values() for m in p.modes()]
REAL = {"claude_code", "codex", "gemini_cli"}
T0 = time.monotonic()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run() -> AsyncIterator[Run]:
    async with e2e_run({"HEARTH_EGRESS_POLICY": "provider"}, prefix="h3e") as r:
        yield r
    print(f"\ntests/standins/test_e2e.py: {time.monotonic() - T0:.1f} s for the module")


@pytest.mark.parametrize(("provider", "mode"), CASES, ids=[f"{p}-{m.value}" for p, m in CASES])
async def test_sign_in_through_the_internet_stand_in(run: Run, provider: str, mode: SigninMode) -> None:
    if provider in REAL and clis.installed() is None:
        pytest.skip("the pinned CLIs are not installed (bash scripts/setup.sh)")
    user = f"u-{provider}-{mode.value}".replace("_", "-")
    out = await sign_in(run, provider, mode, user)
    print(f"{provider} {mode.value} ({out.flow}): {out.seconds}")
    assert out.ok, (out.failed, out.states, out.requests)
    assert out.states == STATES
    token = [x for x in out.seen if x.line() == TOKEN_ENDPOINTS[provider]]
    # The CLI exchanged its code at the provider from the sandbox, over the fabric's egress (masqueraded by the host).
    assert token and {x.peer for x in token} == {HOST_IP}, out.requests
    host = out.seen[0].host
    assert host in run.inet.dns.log.names()  # the provider's name resolved by the stand-in's DNS
    if mode is SigninMode.REMOTE_BROWSER:
        # Everything (the sandbox's Chromium and the CLI) came through the host's side: no other way in. (The
        # person's idle browser keeps asking Google for its accounts meanwhile: that alone comes from elsewhere.)
        assert {x.peer for x in out.seen if not x.path.startswith("/ListAccounts")} == {HOST_IP}, out.seen
        page = [x for x in out.seen if "response_type=code" in x.path]
        assert page and "Chrome" in page[0].user_agent  # the sandbox's Chromium loaded the authorize page
        assert out.seconds["page_drawn"] < out.seconds["clicked"] < out.seconds["completed"]
    else:
        # The person's own browser (their machine) opened the provider's page; the CLI stayed in the sandbox.
        assert {x.peer for x in out.seen} == {HOST_IP, PERSON_IP}, out.seen
        assert all(x.peer == PERSON_IP for x in out.seen if "Chrome" in x.user_agent)


FOREIGN = "www.example.org"  # known to the stand-in's DNS: only the fabric's provider policy refuses it


def drops(metrics: str, sid: str) -> dict[str, float]:
    """hearth_egress_drops_total{sandbox=<sid>, reason=…} from /metrics: reason → count."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("hearth_egress_drops_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("sandbox") == sid:
                out[labels["reason"]] = float(line.rsplit(" ", 1)[1])
    return out


async def test_a_hostile_page_is_refused_and_counted(run: Run) -> None:
    """The provider's page (the example's consent page, made hostile) tries the metadata address, the host (the
    uplink's outer end), the fabric itself, another user's sandbox, and a foreign name; none is reached, and the
    metadata and foreign-name refusals are counted for this sandbox in /metrics. The host, the fabric and another
    sandbox, which Chromium refuses itself, are then tried by a process inside the same sandbox: each dropped by the
    fabric and counted for it."""
    example = next(s for s in run.inet.servers if isinstance(s, ExampleServer))
    other = await run.http.post(
        "/api/auth/start", json={"user_id": "policy-other", "provider": "example", "mode": "direct"}
    )
    assert other.status_code == 201, other.text
    other_sid = other.json()["session_id"]
    other_ip = ""
    for _ in range(300):
        other_ip = str((await run.http.get(f"/api/auth/session/{other_sid}")).json().get("sandbox_ip") or "")
        if other_ip:
            break
        await asyncio.sleep(0.2)
    assert other_ip
    s = run.ctl.settings
    targets = {
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "host": f"http://{next(s.uplink_network.hosts())}:22/",  # the host's end of the uplink
        "fabric": f"http://{s.bridge_ip}:22/",  # the fabric itself (not its callback port: that one is open)
        "sandbox": f"http://{other_ip}:5900/",
        "foreign": f"https://{FOREIGN}/",
    }
    example.probes = list(targets.values())
    example.reports.clear()
    try:
        r = await run.http.post(
            "/api/auth/start", json={"user_id": "policy", "provider": "example", "mode": "remote_browser"}
        )
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        for _ in range(600):
            if example.reports:
                break
            await asyncio.sleep(0.2)
        assert example.reports, "the hostile page never reported (was it loaded?)"
    finally:
        example.probes = []
    report = example.reports[0]
    assert all(not v.startswith("reached") for v in report.values()), report
    assert FOREIGN not in run.inet.dns.log.names()  # the fabric's forwarder refused it without asking upstream
    assert FOREIGN not in [x.host for x in run.inet.traffic.seen]
    counted: dict[str, float] = {}
    for _ in range(100):  # the gate reads its counters every few seconds
        metrics = (await run.http.get("/metrics")).text
        counted = drops(metrics, sid)
        if {"blocked", "dns_refused"} <= {k for k, v in counted.items() if v > 0}:
            break
        await asyncio.sleep(0.5)
    print("refusals counted:", counted, "page saw:", report)
    assert counted.get("blocked", 0) > 0, counted  # the metadata address: sent, dropped by the fabric, counted
    assert counted.get("dns_refused", 0) > 0, counted  # a name outside the provider's egress_domains
    # The host, the fabric and another sandbox: Chromium itself (Local Network Access: a public page may not reach
    # private addresses) refuses these before a packet leaves — the page sees a TypeError at once. The metadata
    # request (or Chromium's preflight for it) is sent and dropped by the fabric: counted `blocked` above; the page
    # sees it run into its timeout (AbortError) or Chromium give up on the preflight first (TypeError), whichever
    # comes first on a loaded host. The fabric's own refusal of each (counted `blocked` / `fabric`) is proven below,
    # from a process inside this sandbox.
    assert report[targets["metadata"]] in ("failed: AbortError", "failed: TypeError"), report
    for what in ("host", "fabric", "sandbox", "foreign"):
        assert report[targets[what]].startswith("failed"), (what, report)
    # The same three from a client Chromium does not guard: a process inside the sign-in sandbox (its own network
    # namespace, as the CLI or anything the person starts there). Each is dropped by the fabric and counted for this
    # sandbox: the host `blocked`, the fabric and another sandbox `fabric` (the fabric answers ARP for every sandbox,
    # so the packet reaches its forward chain) — the gate's counters read right before and after each attempt.
    assert run.ctl.ctl.egress is not None
    gate = run.ctl.ctl.egress.gate
    ip = IPv4Address(str((await run.http.get(f"/api/auth/session/{sid}")).json()["sandbox_ip"]))
    slot = slot_for(s.fabric_netns, s.internal_network, s.bridge_ip, s.ip_pool_start, int(ip) - int(s.ip_pool_start))
    assert slot.ip == ip
    for what, reason in (("host", "blocked"), ("fabric", "fabric"), ("sandbox", "fabric")):
        url = urlsplit(targets[what])
        before = (await gate.refresh()).live.get(sid, {}).get(reason, 0)
        reached = await asyncio.to_thread(dial_from, slot.netns, str(url.hostname), int(url.port or 80))
        after = (await gate.refresh()).live.get(sid, {}).get(reason, 0)
        assert not reached and after > before, (what, reason, before, after)
    shown = drops((await run.http.get("/metrics")).text, sid)
    assert shown.get("blocked", 0) > 0 and shown.get("fabric", 0) > 0, shown  # per sandbox in /metrics
    for gone in (sid, other_sid):
        await run.http.post(f"/api/auth/session/{gone}/cancel")


def dial_from(netns: str, host: str, port: int) -> bool:
    """Whether a TCP connection from inside `netns` to host:port opens (1.5 s)."""

    def go() -> bool:
        with socket.socket() as c:
            c.settimeout(1.5)
            try:
                c.connect((host, port))
            except OSError:
                return False
            return True

    return call_in_netns(netns, go, timeout=15)


async def test_cli_sandboxes_go_out_and_a_plain_desktop_does_not(run: Run) -> None:
    """HEARTH_EGRESS=signin (the default): a user's CLI sandbox is granted its way out (with every provider's
    domains under the provider policy), a plain desktop without a provider is not — and its attempt to go out is
    dropped and counted `no_egress`."""
    ctl = run.ctl.ctl
    assert ctl.settings.egress == "signin" and ctl.egress is not None
    gate = ctl.egress.gate
    row = await ctl.clis.ensure("egress-cli")
    assert row.sandbox_ip
    grant = gate.grant_of(IPv4Address(row.sandbox_ip))
    assert grant is not None and grant.owner == row.owner_id, grant
    assert grant.domains is not None and "claude.ai" in grant.domains, grant.domains
    r = await run.http.post("/api/auth/start", json={"user_id": "plain-desktop"})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    try:
        ip, body = "", {}
        for _ in range(600):  # its desktop up: the sandbox and its namespace exist
            body = (await run.http.get(f"/api/auth/session/{sid}")).json()
            ip = str(body.get("sandbox_ip") or "")
            if ip and body.get("status") == "ready":
                break
            await asyncio.sleep(0.2)
        assert ip and body.get("status") == "ready", body
        assert gate.grant_of(IPv4Address(ip)) is None
        s = run.ctl.settings
        slot = slot_for(
            s.fabric_netns,
            s.internal_network,
            s.bridge_ip,
            s.ip_pool_start,
            int(IPv4Address(ip)) - int(s.ip_pool_start),
        )
        assert not await asyncio.to_thread(dial_from, slot.netns, EXAMPLE_IP, 443), "a plain desktop went out"
        counted = (await gate.refresh()).live.get(f"ungranted {ip}", {})
        assert counted.get("no_egress", 0) > 0, counted
    finally:
        await run.http.post(f"/api/auth/session/{sid}/cancel")
