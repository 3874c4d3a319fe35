"""Table `inet hearth_egress` of the fabric namespace (pure): what may leave through the uplink, and the counters.

Its own table (hearth's `inet hearth` keeps isolation and NAT): a drop in either is final. Built only with egress on.

forward (hook forward, before `inet hearth`):
  - bridge → bridge (one sandbox to another, routed through BRIDGE_IP): dropped, counted `fabric`
  - uplink → bridge: over HEARTH_EGRESS_BANDWIDTH to one sandbox: dropped (counted `bandwidth` for it)
  - bridge → uplink: chain `out`
out:
  - IPv6: dropped (the fabric routes IPv4 only; ULA and every other v6 range with it)
  - a source not in set `granted` (HEARTH_EGRESS decides, hearth/egress/policy.py): dropped, counted `no_egress`
  - a destination in `allow` (HEARTH_EGRESS_ALLOW): to the caps; in `blocked` (policy.BLOCKED): dropped, `blocked`
  - to the caps
caps (per source address, dynamic sets):
  - over HEARTH_EGRESS_BANDWIDTH KiB/s: `bandwidth`
  - a new connection beyond HEARTH_EGRESS_CONN_RATE per second (bursts of 4x): `conn_rate`
  - a new connection beyond HEARTH_EGRESS_CONN_MAX open ones (ct count): `conn_limit`
input (hook input): from the bridge, anything new that `inet hearth` does not let in (BRIDGE_IP's callback, open
  ports and DNS; ICMP): dropped, counted `fabric` — the fabric namespace itself is not a destination.
Every drop updates set `drop_<reason>`, whose elements (the sandbox's address) carry a counter: drops per sandbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hearth.config import Settings
from hearth.egress.policy import BLOCKED, allowed_ranges
from hearth.fabric.nft import DNS_PORT
from hearth.fabric.slot import UPLINK_INNER

FAMILY = "inet"
TABLE = "hearth_egress"
REASONS = ("no_egress", "blocked", "fabric", "conn_limit", "conn_rate", "bandwidth")
RATE_WINDOW = 60  # seconds a per-source rate/bandwidth element lives without traffic
Obj = dict[str, Any]

_SADDR: Obj = {"payload": {"protocol": "ip", "field": "saddr"}}
_DADDR: Obj = {"payload": {"protocol": "ip", "field": "daddr"}}
_NEW: Obj = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}
_DROP: Obj = {"drop": None}


def _meta(key: str, value: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _in(left: Obj, set_name: str, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": left, "right": f"@{set_name}"}}


def _update(set_name: str, key: Obj, *stmt: Obj, op: str = "update") -> Obj:
    body: Obj = {"op": op, "elem": key, "set": f"@{set_name}"}
    if stmt:
        body["stmt"] = list(stmt)
    return {"set": body}


def _count(reason: str, key: Obj = _SADDR) -> Obj:
    return _update(f"drop_{reason}", key)


def _prefix(net: IPv4Network) -> Obj:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


class _Table:
    def __init__(self) -> None:
        self.base = {"family": FAMILY, "table": TABLE}
        self.objects: list[Obj] = [{"table": {"family": FAMILY, "name": TABLE}}]

    def set(self, name: str, **extra: Any) -> None:
        self.objects.append({"set": {**self.base, "name": name, "type": "ipv4_addr", **extra}})

    def chain(self, name: str, hook: str | None = None) -> None:
        body: Obj = {**self.base, "name": name}
        if hook:
            body.update(type="filter", hook=hook, prio=-5, policy="accept")
        self.objects.append({"chain": body})

    def rule(self, chain: str, *expr: Obj) -> None:
        self.objects.append({"rule": {**self.base, "chain": chain, "expr": list(expr)}})


def ruleset(s: Settings, granted: Iterable[IPv4Address] = ()) -> list[Obj]:
    """The table's objects; `granted`: the addresses of the sandboxes allowed out right now."""
    t = _Table()
    br = s.bridge_device
    t.set("granted", elem=sorted(str(ip) for ip in granted)) if granted else t.set("granted")
    allow = [_prefix(n) for n in allowed_ranges(s)]
    t.set("allow", flags=["interval"], **({"elem": allow} if allow else {}))
    t.set("blocked", flags=["interval"], elem=[_prefix(n) for n in BLOCKED])
    t.set("conns", size=65535)
    for name in ("rate", "bw_up", "bw_down"):
        t.set(name, size=65535, flags=["timeout"], timeout=RATE_WINDOW)
    for reason in REASONS:
        t.set(f"drop_{reason}", size=65535, stmt=[{"counter": None}])
    t.chain("forward", "forward")
    t.chain("input", "input")
    t.chain("out")
    t.chain("caps")
    bandwidth = s.egress_bandwidth
    if bandwidth:
        t.rule(
            "forward",
            _meta("iifname", UPLINK_INNER),
            _meta("oifname", br),
            _update("bw_down", _DADDR, _limit_bytes(bandwidth)),
            _count("bandwidth", _DADDR),
            _DROP,
        )
    t.rule("forward", _meta("iifname", br), _meta("oifname", br), _count("fabric"), _DROP)
    t.rule("forward", _meta("iifname", br), _meta("oifname", UPLINK_INNER), {"jump": {"target": "out"}})
    _input(t, s)
    t.rule("out", _meta("nfproto", "ipv6"), _DROP)
    t.rule("out", _in(_SADDR, "granted", "!="), _count("no_egress"), _DROP)
    t.rule("out", _in(_DADDR, "allow"), {"goto": {"target": "caps"}})
    t.rule("out", _in(_DADDR, "blocked"), _count("blocked"), _DROP)
    t.rule("out", {"goto": {"target": "caps"}})
    if bandwidth:
        t.rule("caps", _update("bw_up", _SADDR, _limit_bytes(bandwidth)), _count("bandwidth"), _DROP)
    rate = s.egress_conn_rate
    limit = {"limit": {"rate": rate, "burst": 4 * rate, "per": "second", "inv": True}}
    t.rule("caps", _NEW, _update("rate", _SADDR, limit), _count("conn_rate"), _DROP)
    t.rule(
        "caps", _NEW, _update("conns", _SADDR, {"ct count": {"val": s.egress_conn_max, "inv": True}}, op="add"),
        _count("conn_limit"), _DROP,
    )  # fmt: skip
    return t.objects


def _input(t: _Table, s: Settings) -> None:
    """What the bridge may open in the fabric namespace mirrors `inet hearth` input (hearth/fabric/nft.py)."""
    br = _meta("iifname", s.bridge_device)
    est = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
    t.rule("input", br, est, {"return": None})
    t.rule("input", br, _meta("l4proto", {"set": ["icmp", "ipv6-icmp"]}), {"return": None})
    to_bridge = {"match": {"op": "==", "left": _DADDR, "right": str(s.bridge_ip)}}
    ports = sorted({s.callback_port, *s.fabric_open_ports})
    tcp = {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": ports}}}
    t.rule("input", br, to_bridge, tcp, {"return": None})
    dns = {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": DNS_PORT}}
    t.rule("input", br, to_bridge, _meta("l4proto", {"set": ["tcp", "udp"]}), dns, {"return": None})
    t.rule("input", br, _count("fabric"), _DROP)


def _limit_bytes(kib: int) -> Obj:
    return {
        "limit": {"rate": kib, "rate_unit": "kbytes", "per": "second", "burst": 0, "burst_unit": "bytes", "inv": True}
    }


def replace(objects: list[Obj]) -> Obj:
    """One transaction: (re)create the table (add is a no-op when it exists, then delete, then the contents)."""
    ident = {"family": FAMILY, "name": TABLE}
    return {"nftables": [{"add": {"table": ident}}, {"delete": {"table": ident}}, *({"add": o} for o in objects)]}


def delete() -> Obj:
    ident = {"family": FAMILY, "name": TABLE}
    return {"nftables": [{"add": {"table": ident}}, {"delete": {"table": ident}}]}


def elements(set_name: str, ips: Iterable[IPv4Address], verb: str = "add") -> Obj:
    """Add or delete elements of one set (one transaction)."""
    elem = [str(ip) for ip in ips]
    return {"nftables": [{verb: {"element": {"family": FAMILY, "table": TABLE, "name": set_name, "elem": elem}}}]}


def drops(items: Iterable[Obj]) -> dict[str, dict[str, int]]:
    """Per sandbox address, packets dropped per reason (only non-zero), from a listing of the table."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        body = item.get("set")
        if not isinstance(body, dict) or not str(body.get("name", "")).startswith("drop_"):
            continue
        reason = str(body["name"])[len("drop_") :]
        for e in body.get("elem", []):
            inner = e.get("elem", {}) if isinstance(e, dict) else {}
            packets = int(inner.get("counter", {}).get("packets", 0))
            if packets:
                out.setdefault(str(inner.get("val")), {})[reason] = packets
    return out


def set_elements(items: Iterable[Obj], set_name: str) -> list[str]:
    """The plain elements of one set in a listing."""
    for item in items:
        body = item.get("set")
        if isinstance(body, dict) and body.get("name") == set_name:
            return [str(e["elem"]["val"]) if isinstance(e, dict) else str(e) for e in body.get("elem", [])]
    return []


def rules_of(items: Iterable[Obj]) -> list[tuple[str, list[Obj]]]:
    """(chain, expressions) of every rule, counters' values dropped: what `in_sync` compares."""
    out = []
    for item in items:
        if "rule" in item:
            out.append((str(item["rule"]["chain"]), item["rule"]["expr"]))
    return out
