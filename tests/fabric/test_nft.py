"""nftables: the pure ruleset builders (no root), and the JSON interface against real nft in a fresh namespace."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric import netlink, nft, nftrun
from hearth.fabric.slot import UPLINK_INNER, uplink_outer
from tests import nsnames

Obj = dict[str, Any]


def meta(key: str, value: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def chains(objects: list[Obj]) -> dict[str, Obj]:
    return {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}


def tables(objects: list[Obj]) -> set[tuple[str, str]]:
    out = set()
    for o in objects:
        body = next(iter(o.values()))
        out.add((body["family"], body["name"] if "table" in o else body["table"]))
    return out


# ---- pure ---------------------------------------------------------------------------------------------------


def test_fabric_ruleset_isolates_bridge_and_locks_down_input(make_settings_for: Callable[..., Settings]) -> None:
    s = make_settings_for(BRIDGE_DEVICE="hbr0")
    objs = nft.fabric_ruleset(s)
    assert objs[0] == {"table": {"family": "inet", "name": "hearth"}}
    assert tables(objs) == {("inet", "hearth")}  # only hearth's own table
    c = chains(objs)
    assert set(c) == {"forward", "input"}  # no NAT without egress
    assert (c["forward"]["hook"], c["forward"]["type"], c["forward"]["policy"]) == ("forward", "filter", "accept")
    fwd = nft.rules(objs, "forward")
    assert fwd[0] == [meta("iifname", "hbr0"), meta("oifname", "hbr0"), {"counter": None}, {"drop": None}]
    assert nft.has_isolation(objs, "hbr0") and not nft.has_isolation(objs, "br0")
    inp = nft.rules(objs, "input")
    assert inp[0][1]["match"]["right"] == ["established", "related"] and inp[0][-1] == {"accept": None}
    assert inp[1][1] == meta("l4proto", {"set": ["icmp", "ipv6-icmp"]})
    assert inp[-1] == [meta("iifname", "hbr0"), {"counter": None}, {"drop": None}]  # everything else: dropped
    assert all(rule[0] == meta("iifname", "hbr0") for rule in inp)  # loopback/controller traffic untouched
    assert not nft.has_masquerade(objs)


def test_only_the_declared_tcp_ports_on_bridge_ip_are_open(make_settings_for: Callable[..., Settings]) -> None:
    one = nft.rules(nft.fabric_ruleset(make_settings_for(HEARTH_CALLBACK_PORT="8711")), "input")
    opened = [r for r in one if {"accept": None} in r and any("payload" in str(e) for e in r)]
    dns = [r for r in opened if {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                                           "right": 53}} in r]  # fmt: skip
    assert len(dns) == 1  # the DNS forwarder on BRIDGE_IP (hearth/egress/dns.py), UDP and TCP
    assert {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}} in dns[0]
    opened = [r for r in opened if r not in dns]
    assert len(opened) == 1
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8711}} in (
        opened[0]
    )
    assert {
        "match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.100.1"}
    } in (opened[0])
    many = nft.rules(nft.fabric_ruleset(make_settings_for(HEARTH_FABRIC_OPEN_PORTS="9000,8700")), "input")
    assert any(e.get("match", {}).get("right") == {"set": [8700, 9000]} for r in many for e in r)


def test_egress_adds_masquerade_out_of_the_uplink_only(make_settings_for: Callable[..., Settings]) -> None:
    s = make_settings_for(HEARTH_EGRESS="true", INTERNAL_NETWORK="10.77.0.0/16", BRIDGE_IP="10.77.0.1",
                          IP_POOL_START="10.77.0.2", IP_POOL_END="10.77.0.200")  # fmt: skip
    objs = nft.fabric_ruleset(s)
    post = chains(objs)["postrouting"]
    assert (post["type"], post["hook"], post["prio"]) == ("nat", "postrouting", 100)
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    assert nft.rules(objs, "postrouting") == [
        [
            {"match": {"op": "==", "left": saddr, "right": {"prefix": {"addr": "10.77.0.0", "len": 16}}}},
            meta("oifname", UPLINK_INNER),
            {"masquerade": None},
        ]
    ]
    assert nft.has_masquerade(objs)
    fwd = nft.rules(objs, "forward")
    assert fwd[0][:2] == [meta("iifname", "br0"), meta("oifname", "br0")]  # isolation stays first
    assert [meta("iifname", UPLINK_INNER), {"counter": None}, {"drop": None}] in fwd  # nothing new comes in


def test_root_ruleset_is_hearths_own_table(make_settings_for: Callable[..., Settings]) -> None:
    s = make_settings_for("hearth-tabc123", HEARTH_EGRESS="true", HEARTH_UPLINK_NETWORK="169.254.150.4/30")
    objs = nft.root_ruleset(s)
    assert tables(objs) == {("ip", "hearth_hearth-tabc123")}
    post = nft.rules(objs, "postrouting")
    assert post[0][0]["match"]["right"] == {"prefix": {"addr": "169.254.150.4", "len": 30}}
    outer = uplink_outer("hearth-tabc123")
    assert post[0][1] == meta("oifname", outer, "!=") and post[0][2] == {"masquerade": None}
    assert nft.rules(objs, "input")[-1] == [meta("iifname", outer), {"counter": None}, {"drop": None}]


def test_replace_is_one_atomic_transaction(make_settings_for: Callable[..., Settings]) -> None:
    objs = nft.fabric_ruleset(make_settings_for())
    payload = nft.replace_table(objs)
    cmds = payload["nftables"]
    ident = {"family": "inet", "name": "hearth"}
    assert cmds[:3] == [{"add": {"table": ident}}, {"delete": {"table": ident}}, {"add": {"table": ident}}]
    assert cmds[3:] == [{"add": o} for o in objs[1:]]
    assert json.loads(json.dumps(payload)) == payload  # plain JSON
    assert nft.delete_table("ip", "hearth_x") == {
        "nftables": [{"add": {"table": {"family": "ip", "name": "hearth_x"}}}, {"delete": {"table": {"family": "ip", "name": "hearth_x"}}}]
    }  # fmt: skip


def test_check_ours_refuses_foreign_tables() -> None:
    nft.check_ours(nft.delete_table("ip", "hearth_abc"))
    nft.check_ours({"nftables": [{"flush": {"chain": {"family": "inet", "table": "hearth", "name": "forward"}}}]})
    for name in ("filter", "nat", "hearthx", "docker"):
        with pytest.raises(ValueError, match="refusing"):
            nft.check_ours(nft.delete_table("ip", name))


def test_normalize_ignores_kernel_additions_but_sees_drift(make_settings_for: Callable[..., Settings]) -> None:
    objs = nft.fabric_ruleset(make_settings_for())
    listed: list[Obj] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    for n, o in enumerate(reversed(objs)):  # any listing order of chains; rule order within a chain is kept below
        kind, body = next(iter(o.items()))
        if kind != "rule":
            listed.append({kind: {**body, "handle": n}})
    for n, o in enumerate(x for x in objs if "rule" in x):
        expr = [{"counter": {"packets": 5, "bytes": 300}} if "counter" in e else e for e in o["rule"]["expr"]]
        listed.append({"rule": {**o["rule"], "handle": 100 + n, "expr": expr}})
    assert nft.normalize(listed) == nft.normalize(objs)
    drifted = [i for i in listed if not ("rule" in i and i["rule"]["chain"] == "forward")]
    assert nft.normalize(drifted) != nft.normalize(objs)
    assert not nft.has_isolation(drifted, "br0")


def test_argv_enters_the_namespace_with_nsenter() -> None:
    cmd = nftrun.argv("hearth-tabc", "-f", "-")
    assert cmd[0].endswith("nsenter") and cmd[1:3] == ["--net=/run/netns/hearth-tabc", "--"]
    assert cmd[3].endswith("nft") and cmd[4:] == ["-j", "-f", "-"]
    own = nftrun.argv(None, "list", "tables")
    assert own[0].endswith("nft") and own[1:] == ["-j", "list", "tables"]


# ---- real nft in a namespace of our own ---------------------------------------------------------------------


@pytest.fixture
def scratch_netns(root_only: None) -> Iterator[str]:
    name = nsnames.new()
    netlink.create_netns(name)
    try:
        yield name
    finally:
        netlink.remove_netns(name)


@pytest.mark.netns
async def test_apply_list_and_replace_in_a_namespace(
    scratch_netns: str, make_settings_for: Callable[..., Settings]
) -> None:
    s = make_settings_for(scratch_netns, HEARTH_EGRESS="true")
    assert await nftrun.list_table(scratch_netns, "inet", "hearth") is None
    objs = nft.fabric_ruleset(s)
    await nftrun.apply(scratch_netns, nft.replace_table(objs))
    first = await nftrun.list_table(scratch_netns, "inet", "hearth")
    assert first is not None and nft.normalize(first) == nft.normalize(objs)
    assert nft.has_masquerade(first) and nft.has_isolation(first, "br0")
    await nftrun.apply(scratch_netns, nft.replace_table(objs))  # replacing an existing table works the same
    again = await nftrun.list_table(scratch_netns, "inet", "hearth")
    assert again is not None and nft.normalize(again) == nft.normalize(objs)
    await nftrun.apply(scratch_netns, nft.delete_table("inet", "hearth"))
    await nftrun.apply(scratch_netns, nft.delete_table("inet", "hearth"))  # already gone: success
    assert not await nftrun.table_exists(scratch_netns, "inet", "hearth")


@pytest.mark.netns
async def test_failures_become_fabric_errors(scratch_netns: str) -> None:
    bad = {"nftables": [{"add": {"table": {"family": "inet", "name": "hearth"}}},
                        {"add": {"chain": {"family": "inet", "table": "hearth", "name": "c", "type": "filter",
                                           "hook": "input", "prio": 0, "policy": "accept"}}},
                        {"add": {"rule": {"family": "inet", "table": "hearth", "chain": "c",
                                          "expr": [{"masquerade": None}]}}}]}  # fmt: skip
    with pytest.raises(FabricError) as err:
        await nftrun.apply(scratch_netns, bad, hop=Hop.NAT)
    assert err.value.hop is Hop.NAT and "failed" in err.value.message and err.value.hint
    assert not await nftrun.table_exists(scratch_netns, "inet", "hearth")  # atomic: nothing of it was applied
    with pytest.raises(FabricError) as err:
        await nftrun.apply(scratch_netns, nft.delete_table("inet", "hearth"), timeout=1e-6)
    assert "did not finish" in err.value.message
    with pytest.raises(FabricError) as err:
        await nftrun.list_table(f"{scratch_netns}-missing", "inet", "hearth")
    assert err.value.hop is Hop.FABRIC and "does not exist" in err.value.message


@pytest.mark.netns
def test_apply_works_under_uvloop(scratch_netns: str, make_settings_for: Callable[..., Settings]) -> None:
    """The controller runs on uvloop (uvicorn[standard]), whose subprocess pipes are socketpairs: `nft -f -` cannot
    open /dev/stdin on those, so nftrun.apply must hand it a real pipe."""
    uvloop = pytest.importorskip("uvloop")
    objs = nft.fabric_ruleset(make_settings_for(scratch_netns))

    async def roundtrip() -> list[dict[str, Any]] | None:
        await nftrun.apply(scratch_netns, nft.replace_table(objs))
        return await nftrun.list_table(scratch_netns, "inet", "hearth")

    listed = uvloop.run(roundtrip())
    assert listed is not None and nft.normalize(listed) == nft.normalize(objs)


def test_uplink_names_of_similar_fabrics_do_not_collide() -> None:
    a, b = uplink_outer("hearth-test-aaaaaaa1"), uplink_outer("hearth-test-aaaaaaa2")
    assert a != b and len(a) <= 15 and len(b) <= 15


# ---- scaling: a node's network of 1,000+ sandboxes ------------------------------------------------------------


def _shape(objects: list[Obj]) -> dict[str, int]:
    """How many of each kind of object a ruleset has, and how many elements its sets and maps hold."""
    out: dict[str, int] = {}
    for o in objects:
        kind, body = next(iter(o.items()))
        out[kind] = out.get(kind, 0) + 1
        if kind in ("set", "map"):
            out[f"{kind} elements"] = out.get(f"{kind} elements", 0) + len(body.get("elem", []))
    return out


NETWORKS = ("192.168.100.0/24", "192.168.100.0/22", "10.20.0.0/21")


@pytest.mark.parametrize("egress", ["false", "true"])
def test_rules_are_the_same_whatever_the_pool_size(make_settings_for: Callable[..., Settings], egress: str) -> None:
    """Per-slot state lives in sets and maps (and named counters), never in a rule per slot: the rules of both
    tables of a /21 (2,045 slots) are exactly those of a /24 (253), chain by chain, only the elements grow."""
    shapes = []
    for net in NETWORKS:
        s = make_settings_for("hearth-tscale", INTERNAL_NETWORK=net, HEARTH_EGRESS=egress)
        inet, bridge = nft.fabric_ruleset(s), nft.l2_ruleset(s)
        shapes.append((s.pool_size, _shape(inet), _shape(bridge), [nft.rules(bridge, c) for c in chains(bridge)]))
    sizes = [size for size, *_ in shapes]
    assert sizes == [253, 1021, 2045]
    for (size, fabric, l2, l2_rules), (_, fabric0, l20, l2_rules0) in zip(shapes[1:], shapes[:1] * 2, strict=True):
        assert fabric == fabric0  # nothing per slot at all in table inet hearth
        assert l2["rule"] == l20["rule"] and l2["chain"] == l20["chain"] and l2["set"] == l20["set"] == 1
        assert l2["map"] == l20["map"] == len(nft.L2_SPOOFS)
        assert l2_rules == l2_rules0  # the same rules, not only as many
        assert l2["set elements"] == 2 * size  # (port, MAC, address) per veth and TAP of each slot
        assert l2["map elements"] == 2 * 2 * size  # per spoofing kind, a counter per port


def test_the_ports_set_pins_high_slots_of_a_21(make_settings_for: Callable[..., Settings]) -> None:
    """Slots beyond the first /24 (index > 253) are in the set with their own MAC and address."""
    s = make_settings_for("hearth-tscale", INTERNAL_NETWORK="10.20.0.0/21")
    (ports,) = [o["set"] for o in nft.l2_ruleset(s) if "set" in o]
    elems = {tuple(e["concat"]) for e in ports["elem"]}
    assert ("hearth-v300", "02:68:74:00:01:2c", "10.20.1.46") in elems
    assert ("hearth-t2044", "02:68:74:00:07:fc", "10.20.7.254") in elems
    assert len(elems) == 2 * 2045 and len({e[2] for e in elems}) == 2045


@pytest.mark.netns
async def test_a_21_loads_in_one_transaction(scratch_netns: str, make_settings_for: Callable[..., Settings]) -> None:
    """The kernel takes both tables of a /21 as built, in one transaction each, and lists them back unchanged."""
    s = make_settings_for(scratch_netns, INTERNAL_NETWORK="10.20.0.0/21")
    for family, objs in (("inet", nft.fabric_ruleset(s)), ("bridge", nft.l2_ruleset(s))):
        await nftrun.apply(scratch_netns, nft.replace_table(objs), timeout=60)
        listed = await nftrun.list_table(scratch_netns, family, "hearth", timeout=60)
        assert listed is not None and nft.normalize(listed) == nft.normalize(objs)
