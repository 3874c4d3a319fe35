"""nftables through its JSON interface only: `nft -j -f -` (JSON in) and `nft -j list …` (JSON out).

Compute, then act: `fabric_ruleset` / `root_ruleset` build hearth's tables purely from the settings; `replace_table`
wraps them into one atomic transaction that swaps hearth's own table and touches nothing else; reading nft's JSON
(`normalize`, `rules`, the drop counters) is pure too. Running nft is hearth/fabric/nftrun.py's (`apply`,
`list_table`, …), each call with a timeout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from hearth.config import Settings
from hearth.fabric.slot import UPLINK_INNER, slot_for, uplink_outer

FABRIC_FAMILY = "inet"
FABRIC_TABLE = "hearth"
L2_FAMILY = "bridge"  # table `bridge hearth` (same name, another family): what each bridge port may send
L2_DROPS = ("arp_spoof", "ip_spoof", "not_ipv4")  # comments of the L2 drop rules (their counters go to the doctor)
L2_SPOOFS = L2_DROPS[:2]  # also counted per bridge port ("arp_spoof.<port>", "….unnamed"): drops are attributed
UNNAMED = "unnamed"  # the per-port counter of ports hearth did not name (no slot: not a sandbox)
ROOT_FAMILY = "ip"
OWNED_PREFIX = "hearth"  # every table this module may write is named hearth or hearth_<fabric>
DNS_PORT = 53

Obj = dict[str, Any]


def root_table(fabric: str) -> str:
    """hearth's table in the host namespace for the egress uplink of fabric `fabric`."""
    return f"{OWNED_PREFIX}_{fabric}"


# ---- pure builders ----------------------------------------------------------------------------------------


def _meta(key: str, value: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _payload(proto: str, fld: str, value: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": {"payload": {"protocol": proto, "field": fld}}, "right": value}}


def _match(left: Obj, right: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": left, "right": right}}


def _prefix(net: Any) -> Obj:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


_ESTABLISHED: Obj = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
_ACCEPT: Obj = {"accept": None}
_DROP: Obj = {"drop": None}
_COUNTER: Obj = {"counter": None}


class _Table:
    """Collects the objects of one table (pure)."""

    def __init__(self, family: str, name: str) -> None:
        self.family, self.name = family, name
        self.objects: list[Obj] = [{"table": {"family": family, "name": name}}]

    def chain(self, name: str, hook: str, kind: str = "filter", prio: int = 0, policy: str = "accept") -> None:
        base = {"family": self.family, "table": self.name, "name": name}
        self.objects.append({"chain": {**base, "type": kind, "hook": hook, "prio": prio, "policy": policy}})

    def rule(self, chain: str, *expr: Obj) -> None:
        self.objects.append({"rule": {"family": self.family, "table": self.name, "chain": chain, "expr": list(expr)}})


def fabric_ruleset(settings: Settings) -> list[Obj]:
    """Table `inet hearth` of the fabric namespace (pure).

    forward (policy accept):
      - bridge → bridge: drop. Sandboxes cannot reach each other even routed through BRIDGE_IP (L2 is blocked by
        port isolation already). First, so connections tracked before the table existed are cut too.
      - from the bridge with a source outside INTERNAL_NETWORK: drop (anti-spoofing; strict rp_filter as well).
      - when egress is on, from the uplink only replies come in (new connections towards sandboxes: drop).
    input — the fabric namespace runs no services for sandboxes; from the bridge only:
      established/related, ICMP (ping of the gateway, PMTU), and TCP to BRIDGE_IP on HEARTH_CALLBACK_PORT and
      HEARTH_FABRIC_OPEN_PORTS; everything else from the bridge (and new traffic from the uplink) is dropped.
    postrouting (nat, egress only): masquerade INTERNAL_NETWORK out of the uplink.
    """
    br, net = settings.bridge_device, settings.internal_network
    t = _Table(FABRIC_FAMILY, FABRIC_TABLE)
    t.chain("forward", "forward")
    t.rule("forward", _meta("iifname", br), _meta("oifname", br), _COUNTER, _DROP)
    t.rule("forward", _meta("iifname", br), _payload("ip", "saddr", _prefix(net), "!="), _COUNTER, _DROP)
    if settings.egress:
        t.rule("forward", _meta("iifname", UPLINK_INNER), _ESTABLISHED, _ACCEPT)
        t.rule("forward", _meta("iifname", UPLINK_INNER), _COUNTER, _DROP)
    t.chain("input", "input")
    t.rule("input", _meta("iifname", br), _ESTABLISHED, _ACCEPT)
    t.rule("input", _meta("iifname", br), _meta("l4proto", {"set": ["icmp", "ipv6-icmp"]}), _ACCEPT)
    ports = sorted({settings.callback_port, *settings.fabric_open_ports})
    t.rule(
        "input",
        _meta("iifname", br),
        _payload("ip", "daddr", str(settings.bridge_ip)),
        _payload("tcp", "dport", {"set": ports} if len(ports) > 1 else ports[0]),
        _ACCEPT,
    )
    # DNS to the forwarder on BRIDGE_IP (hearth/egress/dns.py; with egress off nothing listens: refused at once)
    dns = _meta("l4proto", {"set": ["tcp", "udp"]}), _payload("th", "dport", DNS_PORT)
    t.rule("input", _meta("iifname", br), _payload("ip", "daddr", str(settings.bridge_ip)), *dns, _ACCEPT)
    t.rule("input", _meta("iifname", br), _COUNTER, _DROP)
    if settings.egress:
        t.rule("input", _meta("iifname", UPLINK_INNER), _ESTABLISHED, _ACCEPT)
        t.rule("input", _meta("iifname", UPLINK_INNER), _COUNTER, _DROP)
        t.chain("postrouting", "postrouting", kind="nat", prio=100)
        t.rule(
            "postrouting", _payload("ip", "saddr", _prefix(net)), _meta("oifname", UPLINK_INNER), {"masquerade": None}
        )
    return t.objects


def _concat(*parts: Any) -> Obj:
    return {"concat": list(parts)}


def _field(proto: str, fld: str) -> Obj:
    return {"payload": {"protocol": proto, "field": fld}}


def l2_ruleset(settings: Settings) -> list[Obj]:
    """Table `bridge hearth` of the fabric namespace (pure): layer 2 pinned per bridge port.

    Set `ports` holds (port name, MAC, address) for every slot of the pool — veth and TAP — as the pure functions of
    hearth/fabric/slot.py give them, so it never changes while sandboxes come and go. On the bridge's prerouting
    hook (every frame a port sends into the bridge, before the bridge or the fabric's IP stack sees it):
      - ARP whose (port, sender MAC, sender address) or (port, Ethernet source, sender address) is not the slot's:
        counted and dropped (`arp_spoof`) — a sandbox cannot claim another's address;
      - IPv4 whose (port, Ethernet source, source address) is not the slot's: dropped (`ip_spoof`);
      - anything but IPv4 and ARP (IPv6, raw Ethernet, …): dropped (`not_ipv4`).
    A port hearth did not name matches no element, so everything it sends is dropped.

    Spoofing drops are also counted per port, so the doctor names the port (the sandbox) that sent them: a spoofed
    frame jumps to chain `drop_<kind>`, which counts it on the sending port's counter `<kind>.<port>` (objref map
    `<kind>_ports`) — or, for a port hearth did not name, on `<kind>.unnamed` — and drops it.
    """
    t = _Table(L2_FAMILY, FABRIC_TABLE)
    elems: list[Obj] = []
    names: list[str] = []
    for i in range(settings.pool_size):
        slot = slot_for(settings.fabric_netns, settings.internal_network, settings.bridge_ip, settings.ip_pool_start, i)
        for port in (slot.veth_host, slot.tap_name):
            elems.append(_concat(port, slot.mac, str(slot.ip)))
            names.append(port)
    base = {"family": L2_FAMILY, "table": FABRIC_TABLE}
    t.objects.append({"set": {**base, "name": "ports", "type": ["ifname", "ether_addr", "ipv4_addr"], "elem": elems}})
    for name in L2_DROPS:  # named counters: the doctor reads and resets them (take_l2_drops)
        t.objects.append({"counter": {**base, "name": name}})
    iif = {"meta": {"key": "iifname"}}
    for kind in L2_SPOOFS:  # per port: `<kind>.<port>` through map `<kind>_ports`, else `<kind>.unnamed`
        for port in [*names, UNNAMED]:
            t.objects.append({"counter": {**base, "name": port_counter(kind, port)}})
        pairs = [[port, port_counter(kind, port)] for port in names]
        t.objects.append({"map": {**base, "name": f"{kind}_ports", "type": "ifname", "map": "counter", "elem": pairs}})
        t.objects.append({"chain": {**base, "name": f"drop_{kind}"}})
        t.rule(f"drop_{kind}", {"counter": {"map": {"key": iif, "data": f"@{kind}_ports"}}}, _DROP)  # miss: next
        t.rule(f"drop_{kind}", {"counter": port_counter(kind, UNNAMED)}, _DROP)
    t.chain("prerouting", "prerouting", prio=-200)
    arp_ip = _field("arp", "saddr ip")
    spoofed = {kind: {"jump": {"target": f"drop_{kind}"}} for kind in L2_SPOOFS}
    for sender in (_field("arp", "saddr ether"), _field("ether", "saddr")):
        t.rule(
            "prerouting",
            _match(_concat(iif, sender, arp_ip), "@ports", "!="),
            {"counter": L2_DROPS[0]},
            spoofed[L2_DROPS[0]],
        )
    ip_src = _concat(iif, _field("ether", "saddr"), _field("ip", "saddr"))
    t.rule("prerouting", _match(ip_src, "@ports", "!="), {"counter": L2_DROPS[1]}, spoofed[L2_DROPS[1]])
    ethertype = _field("ether", "type")
    t.rule("prerouting", _match(ethertype, {"set": ["ip", "arp"]}, "!="), {"counter": L2_DROPS[2]}, _DROP)
    return t.objects


def port_counter(kind: str, port: str) -> str:
    """The name of the counter of spoofing drops of `kind` sent by bridge port `port` (or UNNAMED)."""
    return f"{kind}.{port}"


def l2_drops_by_port(items: Iterable[Obj]) -> dict[str, dict[str, int]]:
    """Per bridge port (UNNAMED: ports hearth did not name), the spoofing drops it sent, from a listing of table
    `bridge hearth`'s counters: only ports with at least one drop."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        counter = item.get("counter")
        if not isinstance(counter, dict) or "." not in str(counter.get("name", "")):
            continue
        kind, _, port = str(counter["name"]).partition(".")
        packets = int(counter.get("packets", 0))
        if kind in L2_SPOOFS and packets:
            out.setdefault(port, dict.fromkeys(L2_SPOOFS, 0))[kind] += packets
    return out


def l2_drops(items: Iterable[Obj]) -> dict[str, int]:
    """Packets counted by the L2 drop counters in a `bridge hearth` listing (named counters)."""
    out = dict.fromkeys(L2_DROPS, 0)
    for item in items:
        counter = item.get("counter")
        if isinstance(counter, dict) and counter.get("name") in out:
            out[counter["name"]] += int(counter.get("packets", 0))
    return out


def root_ruleset(settings: Settings) -> list[Obj]:
    """Table `ip hearth_<fabric>` of the host namespace, only with egress on (pure).

    - postrouting: masquerade the uplink /30 out of any other host interface.
    - forward: from the uplink only the uplink's own source address passes (anti-spoofing), and never to
      169.254.0.0/16 (cloud metadata services and other link-local neighbours of the host).
    - input: sandboxes cannot open connections to the host itself through the uplink (replies and ICMP only).
    A drop here is final; an accept does not override another table's drop (e.g. a host firewall with forward
    policy drop still blocks egress — allow the uplink there).
    """
    up, outer = settings.uplink_network, uplink_outer(settings.fabric_netns)
    link_local = {"prefix": {"addr": "169.254.0.0", "len": 16}}
    t = _Table(ROOT_FAMILY, root_table(settings.fabric_netns))
    t.chain("forward", "forward")
    t.rule("forward", _meta("iifname", outer), _payload("ip", "saddr", _prefix(up), "!="), _COUNTER, _DROP)
    t.rule("forward", _meta("iifname", outer), _payload("ip", "daddr", link_local), _COUNTER, _DROP)
    t.chain("input", "input")
    t.rule("input", _meta("iifname", outer), _ESTABLISHED, _ACCEPT)
    t.rule("input", _meta("iifname", outer), _meta("l4proto", "icmp"), _ACCEPT)
    t.rule("input", _meta("iifname", outer), _COUNTER, _DROP)
    t.chain("postrouting", "postrouting", kind="nat", prio=100)
    t.rule("postrouting", _payload("ip", "saddr", _prefix(up)), _meta("oifname", outer, "!="), {"masquerade": None})
    return t.objects


def replace_table(objects: list[Obj]) -> Obj:
    """One atomic transaction that (re)creates the table described by `objects` (first object: the table).

    `add table` (a no-op when it exists) then `delete table` then the new contents: works whether or not the table
    existed, never leaves a moment without rules, and fails as a whole.
    """
    table = objects[0]["table"]
    ident = {"family": table["family"], "name": table["name"]}
    cmds: list[Obj] = [{"add": {"table": ident}}, {"delete": {"table": ident}}]
    cmds += [{"add": obj} for obj in objects]
    return {"nftables": cmds}


def delete_table(family: str, name: str) -> Obj:
    """One transaction that removes a table; succeeds when it is already gone (add is a no-op if it exists)."""
    ident = {"family": family, "name": name}
    return {"nftables": [{"add": {"table": ident}}, {"delete": {"table": ident}}]}


def _table_of(obj: Obj) -> str:
    kind, body = next(iter(obj.items()))
    return str(body["name"] if kind == "table" else body["table"])


def check_ours(payload: Obj) -> None:
    """Refuse (ValueError: a bug, not an operational failure) a transaction that touches a table not named hearth…."""
    for cmd in payload["nftables"]:
        for obj in cmd.values():
            name = _table_of(obj)
            if name != OWNED_PREFIX and not name.startswith(f"{OWNED_PREFIX}_"):
                raise ValueError(f"refusing to touch nftables table {name!r}: hearth only writes its own tables")


def normalize(items: Iterable[Obj]) -> list[Obj]:
    """The table, chains and rules of a listing or of a built ruleset, comparable with `==`.

    Drops what the kernel adds (handles, counter values, metainfo) and sorts chains by name; rule order within a
    chain is kept (it matters).
    """
    out: list[Obj] = []
    for item in items:
        kind, body = next(iter(item.items()))
        if kind not in ("table", "set", "map", "counter", "chain", "rule"):
            continue
        body = {k: v for k, v in body.items() if k not in ("handle", "packets", "bytes")}
        if kind == "rule":
            body["expr"] = [{"counter": None} if "counter" in e else e for e in body.get("expr", [])]
        if kind in ("set", "map"):
            body["elem"] = sorted(body.get("elem", []), key=lambda e: json.dumps(e, sort_keys=True))
        out.append({kind: body})
    order = {"table": 0, "set": 1, "map": 1, "counter": 1, "chain": 2, "rule": 3}
    return sorted(out, key=lambda o: (order[next(iter(o))], _sort_name(o)))  # stable: rule order kept


def _sort_name(obj: Obj) -> str:
    kind, body = next(iter(obj.items()))
    return str(body["chain"] if kind == "rule" else body["name"])


def rules(items: Iterable[Obj], chain: str) -> list[list[Obj]]:
    return [i["rule"]["expr"] for i in items if "rule" in i and i["rule"].get("chain") == chain]


def has_masquerade(items: Iterable[Obj]) -> bool:
    return any("masquerade" in e for expr in rules(items, "postrouting") for e in expr)


def has_isolation(items: Iterable[Obj], bridge: str) -> bool:
    """The forward chain drops bridge → bridge traffic."""
    want = [_meta("iifname", bridge), _meta("oifname", bridge)]
    return any(expr[:2] == want and _DROP in expr for expr in rules(items, "forward"))
