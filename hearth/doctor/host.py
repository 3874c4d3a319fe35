"""Host checks, in path order: configuration, fabric namespace, bridge, forwarding, NAT, firewall — and the
advisories that never break a running session (fabric ruleset drift, pool capacity)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hearth.config import LEGACY_NAMES, consistency_problems, read_env_file, unknown_variable_problems
from hearth.doctor import probes
from hearth.doctor.context import Context, Step
from hearth.doctor.report import Finding
from hearth.egress.rules import FAMILY as EGRESS_FAMILY
from hearth.egress.rules import TABLE as EGRESS_TABLE
from hearth.errors import Hop
from hearth.fabric import netlink, nft, nftrun
from hearth.fabric.slot import UPLINK_INNER, link_index, outer_where, uplink_outer
from hearth.store.models import OwnerKind

T = TypeVar("T")

UP = "run `hearth fabric up` (the controller does this at start; it repairs drift)"


# ---- config -----------------------------------------------------------------------------------------------
async def config(ctx: Context) -> Finding:
    parts, s = ctx.parts, ctx.settings
    env = dict(os.environ if parts.environ is None else parts.environ)
    file_vars = await asyncio.to_thread(read_env_file, parts.env_file) if parts.env_file is not None else {}
    problems = unknown_variable_problems({**file_vars, **env}) + consistency_problems(s)
    if not problems:
        return Finding.good(
            f"{s.internal_network}, bridge {s.bridge_device} {s.bridge_ip}/{s.prefixlen}, "
            f"pool {s.ip_pool_start}..{s.ip_pool_end} ({s.pool_size}), fabric {s.fabric_netns}, driver {s.driver}"
        )
    fixes = []
    for name in sorted({**file_vars, **env}):
        if name in LEGACY_NAMES:
            where = ".env" if name in file_vars and name not in env else "the environment"
            fixes.append(f"rename {name} to {LEGACY_NAMES[name]} in {where} (hearth never reads {name})")
    fixes += [p for p in problems if " is set but not read" not in p]
    return Finding.bad("; ".join(problems), "; ".join(fixes) or "; ".join(problems), data={"problems": problems})


# ---- fabric namespace -------------------------------------------------------------------------------------
async def fabric(ctx: Context) -> Finding:
    ns = ctx.fabric
    if not probes.netns_exists(ns):
        return Finding.bad(f"network namespace {ns} does not exist", UP)
    links = await asyncio.to_thread(probes.links, ns)
    ports = sorted(n for n in links if link_index(n) is not None)
    ctx.memo["fabric_links"] = links
    lo = links.get("lo")
    shown = ", ".join(ports[:8]) + (" …" if len(ports) > 8 else "")
    return Finding.good(
        f"namespace {ns} present, lo {'UP' if lo and lo.up else 'DOWN'}, {len(ports)} sandbox port(s)"
        + (f": {shown}" if ports else ""),
        data={"ports": ports},
    )


# ---- bridge -----------------------------------------------------------------------------------------------
async def bridge(ctx: Context) -> Finding:
    s, ns = ctx.settings, ctx.fabric
    links: dict[str, probes.LinkInfo] = ctx.memo.get("fabric_links") or {}
    if not links:
        links = await asyncio.to_thread(probes.links, ns)
    br = links.get(s.bridge_device)
    want = f"{s.bridge_ip}/{s.prefixlen}"
    if br is None:
        return Finding.bad(f"bridge {s.bridge_device} missing in namespace {ns}", UP)
    data: dict[str, Any] = {"addresses": br.addresses, "up": br.up, "kind": br.kind}
    if br.kind != "bridge":
        return Finding.bad(
            f"{s.bridge_device} in {ns} is a {br.kind or 'plain'} link, not a bridge",
            f"delete it (ip -n {ns} link del {s.bridge_device}) or set BRIDGE_DEVICE to another name, then {UP}",
            data=data,
        )
    found = ", ".join(br.addresses) or "no IPv4 address"
    if want not in br.addresses:
        by_hand = "; ".join(f"ip -n {ns} addr del {a} dev {s.bridge_device}" for a in br.addresses)
        return Finding.bad(
            f"{s.bridge_device} carries {found}; expected {want} (BRIDGE_IP / prefix of INTERNAL_NETWORK "
            f"{s.internal_network})",
            f"re-address the bridge: {UP} — by hand: "
            + (f"{by_hand}; " if by_hand else "")
            + f"ip -n {ns} addr add {want} dev {s.bridge_device}",
            data=data,
        )
    if not br.up:
        return Finding.bad(
            f"{s.bridge_device} is administratively DOWN (carries {found})",
            f"ip -n {ns} link set {s.bridge_device} up, or {UP}",
            data=data,
        )
    extra = [a for a in br.addresses if a != want]
    note = f" (also {', '.join(extra)}: drift, `hearth fabric up` removes it)" if extra else ""
    return Finding.good(f"{s.bridge_device} UP with {want}{note}", data=data)


# ---- forwarding -------------------------------------------------------------------------------------------
async def forwarding(ctx: Context) -> Finding:
    ns, s = ctx.fabric, ctx.settings
    values: dict[str, Any] = {}
    for key in ("net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", f"net/ipv4/conf/{s.bridge_device}/rp_filter"):
        values[key] = await asyncio.to_thread(probes.sysctl, ns, key)
    shown = ", ".join(f"{k.removeprefix('net/ipv4/').replace('/', '.')}={v}" for k, v in values.items())
    if values["net/ipv4/ip_forward"] != "1" and s.egress:
        return Finding.bad(
            f"IPv4 forwarding is off in {ns} while egress is on ({shown})",
            f"ip netns exec {ns} sysctl -w net.ipv4.ip_forward=1, or {UP}",
            data=values,
        )
    return Finding.good(shown + ("" if s.egress else " (egress off: sandboxes are only reached, never routed)"))


# ---- nftables: one listing shared by the NAT, firewall and ruleset checks ---------------------------------
async def ruleset_of(ctx: Context, timeout: float = 1.0) -> list[dict[str, Any]]:
    if "ruleset" not in ctx.memo:
        ctx.memo["ruleset"] = await probes.nft_ruleset(ctx.fabric, timeout)
    items: list[dict[str, Any]] = ctx.memo["ruleset"]
    return items


def _table_items(items: list[dict[str, Any]], family: str, name: str) -> list[dict[str, Any]]:
    out = []
    for item in items:
        kind, body = next(iter(item.items()))
        table = body.get("name") if kind == "table" else body.get("table")
        if body.get("family") == family and table == name:
            out.append(item)
    return out


def _masquerades(items: list[dict[str, Any]], ctx: Context) -> list[str]:
    """Descriptions of the masquerade rules of table inet hearth that cover INTERNAL_NETWORK out of the uplink."""
    net = ctx.settings.internal_network
    found = []
    for expr in nft.rules(_table_items(items, nft.FABRIC_FAMILY, nft.FABRIC_TABLE), "postrouting"):
        if not any("masquerade" in e for e in expr):
            continue
        matches = [e["match"] for e in expr if "match" in e]
        saddr: Any = next(
            (m["right"] for m in matches if m.get("left", {}).get("payload", {}).get("field") == "saddr"), {}
        )
        oif = next((m["right"] for m in matches if m.get("left", {}).get("meta", {}).get("key") == "oifname"), None)
        prefix = saddr.get("prefix", {}) if isinstance(saddr, dict) else {}
        if prefix.get("addr") == str(net.network_address) and prefix.get("len") == net.prefixlen:
            found.append(f"masquerade {net} oifname {oif}")
    return found


async def nat(ctx: Context) -> Finding:
    s, ns = ctx.settings, ctx.fabric
    items = await ruleset_of(ctx)
    masq = _masquerades(items, ctx)
    links = await asyncio.to_thread(probes.links, ns, (UPLINK_INNER,))
    inner = links.get(UPLINK_INNER)
    seen = [
        f"masquerade for {s.internal_network}: {'; '.join(masq) if masq else 'none'}",
        f"uplink {UPLINK_INNER}: {inner.describe() if inner else 'missing'}",
    ]
    if not masq:
        return Finding.bad(
            f"egress is on but table inet hearth in {ns} has no masquerade rule for {s.internal_network} "
            f"({'; '.join(seen)})",
            f"{UP} — it restores `ip saddr {s.internal_network} oifname {UPLINK_INNER} masquerade` in chain "
            "inet hearth postrouting",
        )
    if inner is None or not inner.up:
        return Finding.bad(
            f"egress is on but the uplink is {'missing' if inner is None else 'down'} ({'; '.join(seen)})",
            f"{UP} (recreates the uplink {uplink_outer(ns)} ↔ {UPLINK_INNER})",
        )
    outer_ns, where = s.uplink_netns or None, outer_where(s.uplink_netns)
    if outer_ns is not None and not netlink.netns_exists(outer_ns):
        return Finding.bad(
            f"egress is on but the uplink's outer {where} (HEARTH_UPLINK_NETNS) does not exist ({'; '.join(seen)})",
            f"create {outer_ns} and connect it to the outside, or unset HEARTH_UPLINK_NETNS; then {UP}",
        )
    root = await nftrun.list_table(outer_ns, nft.ROOT_FAMILY, nft.root_table(ns), hop=Hop.NAT, timeout=1.0)
    if root is None or not nft.has_masquerade(root):
        return Finding.bad(
            f"table ip {nft.root_table(ns)} in {where} {'is missing' if root is None else 'has no masquerade'}",
            f"{UP} (restores the uplink side's masquerade of {s.uplink_network})",
        )
    return Finding.good("; ".join(seen) + f"; table ip {nft.root_table(ns)} in {where} masquerades {s.uplink_network}")


# ---- firewall in the path ---------------------------------------------------------------------------------
def _drops(items: list[dict[str, Any]]) -> list[str]:
    """Drop policies and drop/reject rules, as "family table: what"."""
    out = []
    for item in items:
        if "chain" in item:
            c = item["chain"]
            if c.get("hook") and c.get("policy") == "drop":
                out.append(f"{c['family']} {c['table']}: chain {c['name']} (hook {c['hook']}) policy drop")
        elif "rule" in item:
            r = item["rule"]
            verdicts = [k for e in r.get("expr", []) for k in e if k in ("drop", "reject")]
            if verdicts:
                out.append(f"{r['family']} {r['table']}: chain {r['chain']} rule {r.get('handle', '?')} {verdicts[0]}")
    return out


def _added(listed: list[dict[str, Any]], built: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chains and rules (where drops live) of a listed table that its built ruleset does not have, compared by
    content through a set: a /22's table bridge hearth holds ~4,100 objects (a counter per port), which normalising
    whole and scanning as a list took ~1 s on a busy host — past the firewall step's time."""

    def verdicts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return nft.normalize(o for o in items if "chain" in o or "rule" in o)

    wanted = {json.dumps(o, sort_keys=True) for o in verdicts(built)}
    return [o for o in verdicts(listed) if json.dumps(o, sort_keys=True) not in wanted]


async def firewall(ctx: Context) -> Finding:
    ns, s = ctx.fabric, ctx.settings
    items = await ruleset_of(ctx)
    tables = sorted({(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i})
    own = ((nft.FABRIC_FAMILY, nft.FABRIC_TABLE), (nft.L2_FAMILY, nft.FABRIC_TABLE), (EGRESS_FAMILY, EGRESS_TABLE))
    foreign = [t for t in tables if t not in own]  # inet hearth_egress: hearth/egress (its drops are the policy)
    findings: list[str] = []
    culprits = []
    for family, name in foreign:
        if drops := _drops(_table_items(items, family, name)):
            findings += drops
            culprits.append((family, name))
    ours = _table_items(items, nft.FABRIC_FAMILY, nft.FABRIC_TABLE)
    findings += _drops(_added(ours, nft.fabric_ruleset(s)))  # drops someone added to our table
    findings += _drops(_added(_table_items(items, nft.L2_FAMILY, nft.FABRIC_TABLE), nft.l2_ruleset(s)))
    brnf = await asyncio.to_thread(probes.sysctl, ns, "net/bridge/bridge-nf-call-iptables")
    brnf_note = (
        "br_netfilter not loaded"
        if brnf is None
        else f"br_netfilter bridge-nf-call-iptables={brnf}"
        + (" (bridged frames also traverse ip/inet hooks)" if brnf == "1" else "")
    )
    shown = ", ".join(f"{f} {n}" for f, n in tables) or "none"
    if findings:
        deletes = "; ".join(f"nsenter --net=/run/netns/{ns} nft delete table {f} {n}" for f, n in culprits)
        return Finding.bad(
            f"firewall rules in the fabric namespace {ns} drop traffic: {'; '.join(findings)} "
            f"(tables: {shown}; {brnf_note})",
            (f"remove the foreign table(s): {deletes}" if deletes else UP)
            + " — hearth owns the fabric namespace; its own rules live in tables inet hearth and hearth_egress",
            data={"tables": [f"{f} {n}" for f, n in tables], "drops": findings},
        )
    return Finding.good(f"tables: {shown}; no foreign drop rules; {brnf_note}")


# ---- advisories -------------------------------------------------------------------------------------------
async def ruleset(ctx: Context) -> Finding:
    s, ns = ctx.settings, ctx.fabric
    ours = _table_items(await ruleset_of(ctx), nft.FABRIC_FAMILY, nft.FABRIC_TABLE)
    if not ours:
        return Finding.bad(f"table inet hearth missing in {ns}: sandboxes are not isolated at L3", UP)
    if not nft.has_isolation(ours, s.bridge_device):
        return Finding.bad("table inet hearth does not drop bridge → bridge traffic (sandboxes could talk)", UP)
    if nft.normalize(ours) != nft.normalize(nft.fabric_ruleset(s)):
        return Finding.bad("table inet hearth differs from the ruleset computed from the settings", UP)
    return Finding.good("table inet hearth matches the settings (isolation, input lockdown)")


async def layer2(ctx: Context) -> Finding:
    """Table bridge hearth is in place as computed, and whether a port tried to send as someone else since the
    last look (the counters are read and reset: each attempt is reported once). Drops are attributed to the port
    that sent them: a session's report looks at its own sandbox's port (and at ports hearth did not name, which are
    no sandbox's) and leaves the other sandboxes' drops to their own reports; the host report takes them all."""
    s, ns = ctx.settings, ctx.fabric
    listed = await ruleset_of(ctx)
    ours = _table_items(listed, nft.L2_FAMILY, nft.FABRIC_TABLE)
    if not ours:
        return Finding.bad(f"table bridge hearth missing in {ns}: sandboxes could spoof ARP/IP of others", UP)
    if nft.normalize(ours) != nft.normalize(nft.l2_ruleset(s)):
        return Finding.bad("table bridge hearth differs from the ruleset computed from the settings", UP)
    if ctx.target is not None:
        return await _layer2_of_port(ctx, ctx.target.port, nft.l2_drops_by_port(ours))
    counters = await _once(ctx, "layer 2 counters", lambda: nftrun.take_l2_counters(ns, timeout=1.0)) or []
    drops, by_port = nft.l2_drops(counters), nft.l2_drops_by_port(counters)
    if drops["arp_spoof"] or drops["ip_spoof"]:
        return Finding.bad(
            f"spoofing attempt seen: {drops['arp_spoof']} ARP and {drops['ip_spoof']} IPv4 frame(s) with another "
            f"slot's MAC/address dropped at the bridge since the last check ({drops['not_ipv4']} non-IPv4 too), "
            f"sent by {_senders(by_port)}",
            f"the sandbox behind each port named is hostile — end its session (`hearth doctor <session>` names it "
            f"from its side); a port hearth did not name is no sandbox: find it with `ip -n {ns} link show master "
            f"{s.bridge_device}` (reported once: the counters were reset)",
            hop=Hop.ARP,
            data={**drops, "ports": by_port},
        )
    return Finding.good(
        f"layer 2 pinned per port (MAC + address); nothing spoofed since the last check: {drops}", data=drops
    )


async def _layer2_of_port(ctx: Context, port: str, listed: dict[str, dict[str, int]]) -> Finding:
    """One session's view: the spoofing its own port sent (and any from ports hearth did not name), read and reset;
    what other sandboxes' ports sent is theirs — counted, named, left for their own reports."""
    ns = ctx.fabric
    taken = await _once(ctx, "layer 2 drops", lambda: nftrun.take_port_drops(ns, (port, nft.UNNAMED), timeout=1.0))
    own, unnamed = taken[port], taken[nft.UNNAMED]
    others = sum(sum(n.values()) for p, n in listed.items() if p not in (port, nft.UNNAMED))
    elsewhere = f"; {others} frame(s) spoofed by other sandboxes' ports are theirs, not this one's" if others else ""
    data = {"port": port, **own, "unnamed": unnamed, "other_ports": others}
    if any(own.values()):
        return Finding.bad(
            f"spoofing attempt seen from this sandbox's port {port}: {own['arp_spoof']} ARP and {own['ip_spoof']} "
            "IPv4 frame(s) with another slot's MAC/address dropped at the bridge since the last check",
            "the sandbox of this session sends as someone else: it is hostile or broken — end this session "
            "(reported once: the counters were reset)",
            hop=Hop.ARP,
            data=data,
        )
    if any(unnamed.values()):
        return Finding.bad(
            f"spoofing attempt seen from a port hearth did not name (no sandbox): {unnamed['arp_spoof']} ARP and "
            f"{unnamed['ip_spoof']} IPv4 frame(s) dropped at the bridge since the last check",
            f"something else is attached to the bridge: find it with `ip -n {ns} link show master "
            f"{ctx.settings.bridge_device}` and remove it (reported once: the counters were reset)",
            hop=Hop.ARP,
            data=data,
        )
    return Finding.good(
        f"layer 2 pinned per port (MAC + address); this sandbox's port {port} spoofed nothing since the last "
        f"check{elsewhere}",
        data=data,
    )


async def _once(ctx: Context, key: str, take: Callable[[], Awaitable[T]]) -> T:
    """A read-and-reset done once per diagnosis: a timeout cancels the wait, not the reset, and the step asked again
    awaits the same reset (a second one would find the first's drops gone: reported by neither)."""
    task = ctx.memo.get(key)
    if task is None:
        task = ctx.memo[key] = asyncio.ensure_future(take())
    return await asyncio.shield(task)


def _senders(by_port: dict[str, dict[str, int]]) -> str:
    named = [f"port {p} (slot {i[1]})" if (i := link_index(p)) else f"port {p}" for p in by_port if p != nft.UNNAMED]
    if nft.UNNAMED in by_port:
        named.append("a port hearth did not name (no sandbox)")
    return ", ".join(named) or "no port on record"


async def pool(ctx: Context) -> Finding:
    records = ctx.parts.records
    assert records is not None
    s = ctx.settings
    leases = await records.ipam.leases()
    size = records.ipam.size
    quarantined = sum(1 for lease in leases if lease.kind is OwnerKind.RECLAIM)
    clis = sum(1 for lease in leases if lease.kind is OwnerKind.CLI)
    used = len(leases)
    shown = (
        f"{used}/{size} addresses of {s.ip_pool_start}..{s.ip_pool_end} leased "
        f"({used - quarantined - clis} browser sessions, {clis} CLI sandboxes, {quarantined} quarantined)"
    )
    warm = ctx.parts.pool
    if warm is None:  # `hearth doctor` reads the store only: the pool lives in the controller's memory
        shown += "; warm pool: not known here (the controller's GET /api/diagnostics reports it)"
    elif warm.enabled:
        modes = ", ".join(
            f"{m} {r['ready']}/{r['size']} ready ({r['filling']} filling)" for m, r in warm.summary().items()
        )
        shown += f"; warm pool: {modes}, {warm.hits} hits, {warm.misses} misses"
    else:
        shown += "; warm pool off (HEARTH_POOL_SIZE)"
    if used >= size:
        return Finding.bad(
            f"IP pool exhausted: {shown}",
            "cancel idle sessions or widen IP_POOL_START..IP_POOL_END inside INTERNAL_NETWORK "
            f"{s.internal_network}"
            + (
                f"; {quarantined} quarantined slot(s) are freed once the reconciler reclaims them"
                if quarantined
                else ""
            ),
            data={"used": used, "size": size},
        )
    return Finding.good(shown, data={"used": used, "size": size})


def _no_egress(ctx: Context) -> str | None:
    return None if ctx.settings.egress else "egress is off (HEARTH_EGRESS=false): no NAT on the path"


def _no_store(ctx: Context) -> str | None:
    return None if ctx.parts.records is not None else "no state database to read leases from"


NFT_HINT = "install nftables and util-linux (scripts/setup.sh) and run as root"

STEPS = [
    Step("config", Hop.CONFIG, config, 0.5, timeout_hint="check the environment and .env with `hearth config check`"),
    Step("fabric namespace", Hop.FABRIC, fabric, 0.5, timeout_hint=UP),
    Step("bridge", Hop.BRIDGE, bridge, 0.5, needs=("fabric namespace",), timeout_hint=UP),
    Step("forwarding", Hop.FORWARDING, forwarding, 0.5, needs=("fabric namespace",), timeout_hint=UP),
    Step("nat", Hop.NAT, nat, 1.0, needs=("fabric namespace",), timeout_hint=NFT_HINT, skip=_no_egress),
    Step("firewall", Hop.FORWARDING, firewall, 1.0, needs=("fabric namespace",), timeout_hint=NFT_HINT),
]
ADVISORIES = [
    Step("fabric ruleset", Hop.FORWARDING, ruleset, 1.0, needs=("fabric namespace",), on_path=False),
    Step("layer 2", Hop.ARP, layer2, 1.0, needs=("fabric namespace",), on_path=False),
    Step("pool", Hop.FABRIC, pool, 0.5, on_path=False, skip=_no_store),
]
