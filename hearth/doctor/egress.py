"""Egress checks (hearth/egress), after NAT in path order: the egress rules are in place, the DNS forwarder on the
bridge answers (asked from the fabric side), a name resolves upstream (asked where the forwarder asks: the uplink's
outer namespace), and — an advisory — the drops counted per sandbox (the session's own when diagnosing one).
"""

from __future__ import annotations

import asyncio
import socket

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from hearth.doctor.context import Context, Step
from hearth.doctor.report import Finding
from hearth.egress import rules
from hearth.egress.dns import PORT, upstreams
from hearth.egress.gate import DNS_REFUSED, EgressGate
from hearth.errors import Hop
from hearth.fabric import nftrun
from hearth.fabric.dial import acall_in_netns
from hearth.fabric.slot import outer_where
from hearth.providers.registry import load as load_providers

SERVE = "restart `hearth serve` (it builds the egress rules and starts the DNS forwarder with the fabric)"
WHY = {
    "no_egress": "sandbox without egress (HEARTH_EGRESS)",
    "blocked": "private/link-local/metadata/loopback destination",
    "fabric": "the fabric or another sandbox",
    "conn_limit": "over HEARTH_EGRESS_CONN_MAX",
    "conn_rate": "over HEARTH_EGRESS_CONN_RATE",
    "bandwidth": "over HEARTH_EGRESS_BANDWIDTH",
    DNS_REFUSED: "names refused by the DNS forwarder",
}


def probe_name() -> str:
    """The name the doctor resolves: the first domain of the first provider (by name) that lists any."""
    for _name, p in sorted(load_providers().items()):
        if p.egress_domains:
            return p.egress_domains[0]
    return "example.com"


async def _ask(netns: str | None, server: str, name: str, timeout: float) -> dns.message.Message:
    """One UDP query from inside `netns` (a socket made there), with a timeout."""
    q = dns.message.make_query(name, dns.rdatatype.A)
    loop = asyncio.get_running_loop()
    sock = await acall_in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), timeout)
    try:
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (server, PORT)), timeout)
        await asyncio.wait_for(loop.sock_sendall(sock, q.to_wire()), timeout)
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
            r = dns.message.from_wire(data)
            if r.id == q.id:
                return r
    finally:
        sock.close()


def _no_egress(ctx: Context) -> str | None:
    return None if ctx.settings.egress else "egress is off (HEARTH_EGRESS=false): no way out, no DNS"


def _gate(ctx: Context) -> EgressGate | None:
    return ctx.parts.gate


async def egress_rules(ctx: Context) -> Finding:
    items = await nftrun.list_table(ctx.fabric, rules.FAMILY, rules.TABLE, hop=Hop.EGRESS, timeout=1.0)
    if items is None:
        return Finding.bad(
            f"table inet {rules.TABLE} is missing in {ctx.fabric}: sandboxes go out unguarded (private and metadata "
            "addresses, no caps, nothing counted)",
            SERVE,
        )
    granted = rules.set_elements(items, "granted")
    return Finding.good(
        f"table inet {rules.TABLE} guards egress; {len(granted)} sandbox(es) granted a way out",
        data={"granted": granted},
    )


async def resolver(ctx: Context) -> Finding:
    s = ctx.settings
    where = f"{s.bridge_ip}:{PORT}"
    try:
        r = await _ask(ctx.fabric, str(s.bridge_ip), probe_name(), 0.6)
    except (OSError, TimeoutError, dns.exception.DNSException) as exc:
        return Finding.bad(
            f"the DNS forwarder on {where} in {ctx.fabric} does not answer ({type(exc).__name__}: {exc}); sandboxes "
            "resolve no names",
            SERVE,
        )
    return Finding.good(
        f"the DNS forwarder on {where} answers (asked from the fabric itself: {dns.rcode.to_text(r.rcode())})"
    )


async def name_resolves(ctx: Context) -> Finding:
    s = ctx.settings
    servers, name = upstreams(s), probe_name()
    where = outer_where(s.uplink_netns)
    fix = (
        "make the upstream resolvers reachable from "
        f"{where} (its /etc/resolv.conf), or set HEARTH_DNS_UPSTREAM to resolvers that are"
    )
    if not servers:
        return Finding.bad("no upstream resolver: /etc/resolv.conf lists no IPv4 nameserver", fix)
    seen = []
    for server in servers:
        try:
            r = await _ask(s.uplink_netns or None, server, name, 0.4)
        except (OSError, TimeoutError, dns.exception.DNSException) as exc:
            seen.append(f"{server}: no answer ({type(exc).__name__})")
            continue
        ips = [rd.to_text() for rrset in r.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A]
        if r.rcode() == dns.rcode.NOERROR and ips:
            return Finding.good(f"{name} resolves upstream ({server} from {where}): {', '.join(ips)}")
        seen.append(f"{server}: {dns.rcode.to_text(r.rcode())}, {len(ips)} address(es)")
    return Finding.bad(f"{name} does not resolve upstream from {where} ({'; '.join(seen)})", fix)


async def policy_drops(ctx: Context) -> Finding:
    """Drops per sandbox; diagnosing a session: its own (bad when any, naming what was refused and the fix)."""
    gate = _gate(ctx)
    if gate is not None and gate.on:
        d = await gate.refresh()
        by_owner = d.live
    else:  # the CLI: the counters only (DNS refusals live in the controller)
        items = await nftrun.list_table(ctx.fabric, rules.FAMILY, rules.TABLE, hop=Hop.EGRESS, timeout=1.0)
        by_owner = rules.drops(items or [])
    t = ctx.target
    if t is None:
        shown = "; ".join(f"{o}: {_describe(r)}" for o, r in sorted(by_owner.items())) or "none"
        return Finding.good(f"egress drops per sandbox: {shown}", data={"drops": by_owner})
    mine = by_owner.get(t.view.id) or by_owner.get(t.ip) or by_owner.get(f"ungranted {t.ip}") or {}
    if not mine:
        return Finding.good(f"no egress drops for this sandbox ({t.ip})")
    hint = "the sandbox tried what egress refuses: " + _fix(mine)
    return Finding.bad(f"sandbox {t.ip} (session {t.view.id}) refused on the way out: {_describe(mine)}", hint)


def _describe(reasons: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason} ({WHY.get(reason, reason)})" for reason, n in sorted(reasons.items()))


def _fix(reasons: dict[str, int]) -> str:
    fixes = {
        "blocked": "list the range in HEARTH_EGRESS_ALLOW if the sandbox must reach it",
        DNS_REFUSED: "add the domain to the provider's egress_domains, or HEARTH_EGRESS_POLICY=open",
        "no_egress": "HEARTH_EGRESS=true gives plain desktops a way out",
        "conn_limit": "raise HEARTH_EGRESS_CONN_MAX",
        "conn_rate": "raise HEARTH_EGRESS_CONN_RATE",
        "bandwidth": "raise HEARTH_EGRESS_BANDWIDTH",
        "fabric": "nothing: sandboxes never reach the fabric or each other",
    }
    return "; ".join(fixes[r] for r in sorted(reasons) if r in fixes)


STEPS = [
    Step("egress rules", Hop.EGRESS, egress_rules, 1.0, needs=("fabric namespace",), skip=_no_egress),
    Step("resolver", Hop.DNS, resolver, 0.8, needs=("fabric namespace",), timeout_hint=SERVE, skip=_no_egress),
    Step("name resolves", Hop.DNS, name_resolves, 1.0, needs=("resolver",), skip=_no_egress),
]
ADVISORIES = [
    Step("policy drops", Hop.EGRESS, policy_drops, 1.0, needs=("fabric namespace",), on_path=False, skip=_no_egress),
]
