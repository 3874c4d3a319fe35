"""The fabric against the real kernel: namespaces, bridge, sysctls, nftables and the egress uplink — no mocks.

Every root test works in a namespace of its own (`hearth-t<hex>`) and a link-local /30 of its own; the fixtures in
conftest.py remove all of it. Traffic only flows between namespaces these tests create.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hearth.cli.fabric import fabric_app
from hearth.config import Settings
from hearth.errors import FabricError, Hop
from hearth.fabric import dial, netlink, nft, nftrun, ports
from hearth.fabric.base import FabricStatus, PortStatus, diagnose
from hearth.fabric.dial import call_in_netns
from hearth.fabric.fabric import Fabric
from hearth.fabric.slot import UPLINK_INNER, slot_for, uplink_outer

Make = Callable[..., Settings]


def in_fabric(s: Settings, fn: Callable[[Any], Any]) -> Any:
    with netlink.ns(s.fabric_netns) as h:
        return fn(h)


async def fabric_do(s: Settings, fn: Callable[[Any], Any]) -> Any:
    return await asyncio.to_thread(in_fabric, s, fn)


def add_loose_port(name: str, attach_to: str | None = None) -> Callable[[Any], None]:
    """A veth pair inside the fabric namespace, one end named like a sandbox port."""

    def add(h: Any) -> None:
        h.link("add", ifname=name, kind="veth", peer={"ifname": f"p{name[-6:]}"})
        idx = netlink.link_index(h, name)
        if attach_to is not None:
            h.link("set", index=idx, master=netlink.link_index(h, attach_to), state="up")

    return add


def fabric_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hearth.fabric" and r.levelno >= logging.WARNING]


# ---- pure -------------------------------------------------------------------------------------------------


def test_diagnose_names_the_fix_for_each_problem(make_settings_for: Make) -> None:
    s = make_settings_for("hearth-tdiag01")
    gone = FabricStatus(netns=s.fabric_netns, bridge="br0", egress=False, root_nat=True)
    assert diagnose(s, gone) == [
        "fabric namespace hearth-tdiag01 does not exist: run `hearth fabric up`",
        "table ip hearth_hearth-tdiag01 in the host namespace is left over: run `hearth fabric down`",
    ]
    drifted = FabricStatus(
        netns=s.fabric_netns, bridge="br0", egress=False, netns_exists=True, bridge_exists=True,
        bridge_kind="bridge", bridge_up=False, bridge_addresses=["10.9.9.1/24"], forwarding=True, nft_table=True,
        isolation_rule=True, nft_in_sync=False, uplink=True,
        ports=[PortStatus("hearth-v1", None, False, "down"), PortStatus("hearth-t2", "br0", False, "up")],
    )  # fmt: skip
    problems = diagnose(s, drifted)
    assert all("hearth fabric up" in p for p in problems), problems
    text = "\n".join(problems)
    for needle in ("is down", "lacks its address 192.168.100.1/22", "unexpected address(es) 10.9.9.1/24",
                   "differs from the ruleset", "egress is off", "hearth-v1 is not on bridge br0",
                   "hearth-t2 is not isolated"):  # fmt: skip
        assert needle in text
    taken = FabricStatus(netns=s.fabric_netns, bridge="br0", egress=False, netns_exists=True, bridge_kind="veth")
    assert "is a veth link, not a bridge: delete it or set BRIDGE_DEVICE" in diagnose(s, taken)[0]
    st = FabricStatus(
        netns=s.fabric_netns, bridge="br0", egress=True, ports=[PortStatus("hearth-v0", "br0", True, "up")]
    )
    assert json.loads(json.dumps(st.as_dict()))["ports"][0] == {
        "name": "hearth-v0", "master": "br0", "isolated": True, "oper_state": "up"
    }  # fmt: skip


def test_cli_config_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(fabric_app, ["status"], env={"BRIDGE_IP": "10.1.1.1", "VM_BRIDGE_IP": "x"})
    assert result.exit_code == 2
    assert "BRIDGE_IP=10.1.1.1 is outside INTERNAL_NETWORK" in result.output
    assert "VM_BRIDGE_IP is set but not read; did you mean BRIDGE_IP?" in result.output


# ---- root ------------------------------------------------------------------------------------------------


@pytest.mark.netns
async def test_up_is_idempotent_status_complete_down_is_idempotent(
    fabric_settings: Make, caplog: pytest.LogCaptureFixture
) -> None:
    s = fabric_settings()
    fabric = Fabric(s)
    await fabric.up()
    table = await nftrun.list_table(s.fabric_netns, "inet", "hearth")
    caplog.set_level(logging.INFO, logger="hearth.fabric")
    caplog.clear()
    await fabric.up()  # second call: nothing to change
    assert fabric_warnings(caplog) == []
    assert await nftrun.list_table(s.fabric_netns, "inet", "hearth") == table  # same handles: not even re-applied
    st = await fabric.status()
    assert st.ok, st.problems
    assert (st.netns_exists, st.bridge_exists, st.bridge_up, st.forwarding) == (True, True, True, True)
    assert st.bridge_addresses == ["192.168.100.1/22"]
    assert (st.nft_table, st.nft_in_sync, st.isolation_rule) == (True, True, True)
    assert (st.masquerade, st.uplink, st.root_nat, st.ports) == (False, False, False, [])
    assert json.loads(json.dumps(st.as_dict()))["ok"] is True
    sysctl = await asyncio.to_thread(
        call_in_netns, s.fabric_netns, lambda: Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip()
    )
    assert sysctl == "1"
    await fabric.down()
    assert not netlink.netns_exists(s.fabric_netns)
    await fabric.down()  # already gone: success
    gone = await fabric.status()
    assert not gone.netns_exists and gone.problems == [
        f"fabric namespace {s.fabric_netns} does not exist: run `hearth fabric up`"
    ]


@pytest.mark.netns
async def test_egress_uplink_masquerade_and_turning_it_off(fabric_settings: Make) -> None:
    s = fabric_settings(egress=True)
    gw, me = (str(a) for a in s.uplink_network.hosts())
    await Fabric(s).up()
    await Fabric(s).up()
    st = await Fabric(s).status()
    assert st.ok, st.problems
    assert (st.egress, st.uplink, st.masquerade, st.root_nat) == (True, True, True, True)

    assert s.uplink_netns  # the outer end lives in the test's own namespace, never the machine's root one

    def host_side() -> list[str]:
        with netlink.ns(str(s.uplink_netns)) as r:
            idx = netlink.link_index(r, uplink_outer(s.fabric_netns))
            return [] if idx is None else netlink.ipv4_addresses(r, idx)

    def root_side() -> bool:
        with netlink.root() as r:
            return netlink.link_index(r, uplink_outer(s.fabric_netns)) is not None

    assert await asyncio.to_thread(host_side) == [f"{gw}/30"]

    def fabric_side(h: Any) -> tuple[list[str], list[Any]]:
        idx = netlink.link_index(h, UPLINK_INNER)
        assert idx is not None
        routes = [netlink.attr(r, "RTA_GATEWAY") for r in h.get_routes(family=2, table=254) if r["dst_len"] == 0]
        return netlink.ipv4_addresses(h, idx), routes

    assert await fabric_do(s, fabric_side) == ([f"{me}/30"], [gw])
    assert await nftrun.table_exists(s.uplink_netns, "ip", nft.root_table(s.fabric_netns))
    assert not await asyncio.to_thread(root_side)
    assert not await nftrun.table_exists(None, "ip", nft.root_table(s.fabric_netns))
    forward = await asyncio.to_thread(
        call_in_netns, s.uplink_netns, lambda: Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    )
    assert forward == "1"

    off = s.model_copy(update={"egress": False})  # same fabric, egress turned off: up() removes what egress added
    await Fabric(off).up()
    st = await Fabric(off).status()
    assert st.ok, st.problems
    assert (st.uplink, st.masquerade, st.root_nat) == (False, False, False)
    assert await asyncio.to_thread(host_side) == []
    await Fabric(s).up()
    await Fabric(s).down()
    assert await asyncio.to_thread(host_side) == []
    assert not await nftrun.table_exists(s.uplink_netns, "ip", nft.root_table(s.fabric_netns))


@pytest.mark.netns
async def test_up_repairs_drift_and_reports_it(fabric_settings: Make, caplog: pytest.LogCaptureFixture) -> None:
    s = fabric_settings()
    await Fabric(s).up()

    def vandalise(h: Any) -> None:
        br = netlink.link_index(h, "br0")
        h.addr("del", index=br, address="192.168.100.1", prefixlen=22)
        h.addr("add", index=br, address="10.123.0.1", prefixlen=16)  # inside our own namespace only
        h.link("set", index=br, state="down")
        add_loose_port("hearth-v7")(h)  # a sandbox port, detached
        add_loose_port("hearth-t8", attach_to="br0")(h)  # on the bridge but not isolated

    await fabric_do(s, vandalise)
    flush = {"flush": {"chain": {"family": "inet", "table": "hearth", "name": "forward"}}}
    await nftrun.apply(s.fabric_netns, {"nftables": [flush]})

    def forwarding_off() -> None:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("0")

    await asyncio.to_thread(call_in_netns, s.fabric_netns, forwarding_off)
    before = await Fabric(s).status()
    text = "\n".join(before.problems)
    for needle in ("is down", "lacks its address", "10.123.0.1/16", "forwarding is off", "bridge → bridge",
                   "hearth-v7 is not on bridge", "hearth-t8 is not isolated"):  # fmt: skip
        assert needle in text, text
    assert not before.isolation_rule

    caplog.set_level(logging.INFO, logger="hearth.fabric")
    await Fabric(s).up()
    after = await Fabric(s).status()
    assert after.ok, after.problems
    assert after.bridge_addresses == ["192.168.100.1/22"] and after.bridge_up and after.forwarding
    assert {p.name: (p.master, p.isolated) for p in after.ports} == {
        "hearth-v7": ("br0", True),
        "hearth-t8": ("br0", True),
    }
    reported = "\n".join(fabric_warnings(caplog))
    for needle in ("removed address 10.123.0.1/16", "added address 192.168.100.1/22", "br0: set up",
                   "net.ipv4.ip_forward=1", "hearth-v7: attached to br0", "hearth-t8: isolated",
                   "table inet hearth replaced"):  # fmt: skip
        assert needle in reported, reported


@pytest.mark.netns
async def test_down_refuses_while_ports_are_attached_unless_forced(fabric_settings: Make) -> None:
    s = fabric_settings()
    await Fabric(s).up()
    await fabric_do(s, add_loose_port("hearth-v3", attach_to="br0"))
    with pytest.raises(FabricError) as err:
        await Fabric(s).down()
    assert err.value.hop is Hop.FABRIC and "hearth-v3" in err.value.message and "--force" in err.value.hint
    assert netlink.netns_exists(s.fabric_netns)
    await Fabric(s).down(force=True)
    assert not netlink.netns_exists(s.fabric_netns)


@pytest.mark.netns
async def test_failed_up_rolls_back_everything_it_created(fabric_settings: Make) -> None:
    """The uplink name is taken by a link in the uplink's namespace that is not ours: up() fails after creating the
    namespace, bridge and sysctls — and removes them all again, without touching the foreign link."""
    s = fabric_settings(egress=True)
    outer = uplink_outer(s.fabric_netns)
    peer = f"hx{secrets.token_hex(3)}"

    def foreign(action: str) -> list[str] | None:
        with netlink.ns(str(s.uplink_netns)) as r:
            if action == "add":
                r.link("add", ifname=outer, kind="veth", peer={"ifname": peer})  # no address
                return None
            if action == "del":
                netlink.delete_link(r, outer)
                return None
            idx = netlink.link_index(r, outer)
            return None if idx is None else netlink.ipv4_addresses(r, idx)

    await asyncio.to_thread(foreign, "add")
    try:
        with pytest.raises(FabricError) as err:
            await Fabric(s).up()
        assert err.value.hop is Hop.NAT and "not the uplink of fabric" in err.value.message
        assert not netlink.netns_exists(s.fabric_netns)  # created by this attempt, so rolled back
        assert not await nftrun.table_exists(s.uplink_netns, "ip", nft.root_table(s.fabric_netns))
        assert await asyncio.to_thread(foreign, "get") == []  # still there, untouched
        st = await Fabric(s).status()
        assert not st.netns_exists and st.uplink_conflict
    finally:
        await asyncio.to_thread(foreign, "del")


@pytest.mark.netns
async def test_a_missing_uplink_namespace_is_named_with_its_fix(fabric_settings: Make) -> None:
    """HEARTH_UPLINK_NETNS names a namespace that is gone: up() refuses (hop nat) without creating it, and the
    status names it; nothing of the attempt is left behind."""
    s = fabric_settings(egress=True)
    assert s.uplink_netns
    await asyncio.to_thread(netlink.remove_netns, s.uplink_netns)
    with pytest.raises(FabricError) as err:
        await Fabric(s).up()
    assert err.value.hop is Hop.NAT and f"{s.uplink_netns} (HEARTH_UPLINK_NETNS) does not exist" in err.value.message
    assert "unset HEARTH_UPLINK_NETNS" in err.value.hint
    assert not netlink.netns_exists(s.uplink_netns) and not netlink.netns_exists(s.fabric_netns)
    await Fabric(s.model_copy(update={"egress": False})).up()
    st = await Fabric(s).status()
    assert st.uplink_netns_missing and not st.uplink_conflict
    assert any("(HEARTH_UPLINK_NETNS) does not exist" in p for p in st.problems), st.problems


@pytest.mark.netns
async def test_a_non_bridge_link_with_the_bridge_name_is_refused(fabric_settings: Make) -> None:
    s = fabric_settings()
    netlink.create_netns(s.fabric_netns)  # a namespace that exists before up(): not up()'s to delete
    await fabric_do(s, lambda h: h.link("add", ifname="br0", kind="veth", peer={"ifname": "br0peer"}))
    with pytest.raises(FabricError) as err:
        await Fabric(s).up()
    assert err.value.hop is Hop.BRIDGE and "not a bridge" in err.value.message and "BRIDGE_DEVICE" in err.value.hint
    assert netlink.netns_exists(s.fabric_netns)
    assert await fabric_do(s, lambda h: netlink.link_kind(h, netlink.link_index(h, "br0") or 0)) == "veth"
    assert not await nftrun.table_exists(s.fabric_netns, "inet", "hearth")
    st = await Fabric(s).status()
    assert st.bridge_kind == "veth" and not st.bridge_exists


async def tcp_reaches(netns: str, host: str, port: int, timeout: float = 1.5) -> bool:
    try:
        sock = await dial.connect(netns, host, port, timeout)
    except (TimeoutError, OSError):
        return False
    sock.close()
    return True


def listener(netns: str, host: str, port: int) -> socket.socket:
    sock = dial.socket_in_netns(netns)
    sock.bind((host, port))
    sock.listen(8)
    return sock


@pytest.mark.netns
async def test_sandboxes_cannot_reach_each_other_or_closed_fabric_ports(fabric_settings: Make) -> None:
    s = fabric_settings()
    await Fabric(s).up()
    a, b = (slot_for(s.fabric_netns, s.internal_network, s.bridge_ip, s.ip_pool_start, i) for i in (0, 1))
    socks: list[socket.socket] = []
    try:
        for slot in (a, b):
            netlink.create_netns(slot.netns)
            await ports.add_veth(s, slot)
        socks.append(listener(b.netns, str(b.ip), 8000))
        socks.append(listener(s.fabric_netns, str(s.bridge_ip), 9000))
        socks.append(listener(s.fabric_netns, str(s.bridge_ip), s.callback_port))
        assert await tcp_reaches(s.fabric_netns, str(b.ip), 8000)  # the listener works; the controller reaches it
        assert not await tcp_reaches(a.netns, str(b.ip), 8000)  # L2: isolated bridge ports

        def route_via_gateway() -> None:
            with netlink.ns(a.netns) as h:
                h.route("add", dst=f"{b.ip}/32", gateway=str(s.bridge_ip))

        await asyncio.to_thread(route_via_gateway)
        assert not await tcp_reaches(a.netns, str(b.ip), 8000)  # L3 through the fabric: forward drop
        assert not await tcp_reaches(a.netns, str(s.bridge_ip), 9000)  # fabric services: input drop
        assert await tcp_reaches(a.netns, str(s.bridge_ip), s.callback_port)  # the one declared port
        st = await Fabric(s).status()
        assert st.ok and sorted(p.name for p in st.ports) == ["hearth-v0", "hearth-v1"]
        assert all(p.isolated and p.master == "br0" for p in st.ports)
    finally:
        for sock in socks:
            sock.close()
        for slot in (a, b):
            with contextlib.suppress(FabricError):
                netlink.remove_netns(slot.netns)


@pytest.mark.netns
def test_cli_up_status_down(fabric_settings: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = fabric_settings()
    monkeypatch.chdir(tmp_path)
    env = {"HEARTH_FABRIC_NETNS": s.fabric_netns, "HEARTH_DATA_DIR": str(s.data_dir)}
    run = CliRunner().invoke
    assert run(fabric_app, ["status"], env=env).exit_code == 1  # not up yet: a problem
    assert run(fabric_app, ["up"], env=env).exit_code == 0
    shown = run(fabric_app, ["status", "--json"], env=env)
    assert shown.exit_code == 0 and json.loads(shown.output)["ok"] is True
    human = run(fabric_app, ["status"], env=env)
    assert human.exit_code == 0 and "no problems" in human.output
    assert run(fabric_app, ["down"], env=env).exit_code == 0
    assert not netlink.netns_exists(s.fabric_netns)
