"""What the fabric reports: its status (ports, bridge, tables, uplink) and the problems of an observed fabric, each
naming its fix. The fabric itself is `hearth.fabric.fabric.Fabric` (up, down, status)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hearth.config import Settings
from hearth.fabric.nft import root_table
from hearth.fabric.slot import UPLINK_INNER, outer_where, uplink_outer


@dataclass(frozen=True)
class PortStatus:
    """One sandbox port (`hearth-v<i>` veth or `hearth-t<i>` TAP) in the fabric namespace."""

    name: str
    master: str | None  # the bridge it is enslaved to, None when detached
    isolated: bool  # bridge port isolation (no L2 traffic to other isolated ports)
    oper_state: str  # "up", "down", "lowerlayerdown", …


@dataclass(frozen=True)
class FabricStatus:
    """What exists right now (read-only snapshot). Every entry of `problems` names its fix."""

    netns: str
    bridge: str
    egress: bool  # configured (HEARTH_EGRESS), not observed
    netns_exists: bool = False
    bridge_exists: bool = False
    bridge_kind: str | None = None  # kind of the link named BRIDGE_DEVICE ("bridge" unless something else took it)
    bridge_up: bool = False
    bridge_addresses: list[str] = field(default_factory=list)  # "ip/prefix"
    forwarding: bool = False  # net.ipv4.ip_forward inside the fabric namespace
    nft_table: bool = False  # table inet hearth present in the fabric namespace
    nft_in_sync: bool = False  # … and equal to the ruleset computed from the settings
    isolation_rule: bool = False  # forward: bridge → bridge drop
    masquerade: bool = False  # postrouting masquerade rule present
    uplink: bool = False  # egress veth pair present (both ends, ours)
    uplink_conflict: bool = False  # a link outside has the uplink's name but is not ours
    uplink_netns_missing: bool = False  # HEARTH_UPLINK_NETNS names a namespace that does not exist
    root_nat: bool = False  # table ip hearth_<fabric> present where the uplink's outer end lives
    ports: list[PortStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (lists, strings, booleans)."""
        return {**asdict(self), "ok": self.ok}


def diagnose(s: Settings, st: FabricStatus) -> list[str]:
    """Every problem of an observed fabric, each naming its fix (pure)."""
    up = "run `hearth fabric up`"
    where = outer_where(s.uplink_netns)
    if not st.netns_exists:
        out = [f"fabric namespace {st.netns} does not exist: {up}"]
        if st.root_nat:
            out.append(f"table ip {root_table(st.netns)} in {where} is left over: run `hearth fabric down`")
        return out
    br, want = st.bridge, f"{s.bridge_ip}/{s.prefixlen}"
    out = []
    if st.bridge_kind not in (None, "bridge"):
        out.append(f"{br} is a {st.bridge_kind} link, not a bridge: delete it or set BRIDGE_DEVICE to another name")
    elif not st.bridge_exists:
        out.append(f"bridge {br} missing in namespace {st.netns}: {up}")
    else:
        if not st.bridge_up:
            out.append(f"bridge {br} is down: {up}")
        if want not in st.bridge_addresses:
            out.append(f"bridge {br} lacks its address {want}: {up}")
        if extra := [a for a in st.bridge_addresses if a != want]:
            out.append(f"bridge {br} carries unexpected address(es) {', '.join(extra)}: {up} (removes them)")
    if not st.forwarding:
        out.append(f"IPv4 forwarding is off in namespace {st.netns}: {up}")
    if not st.nft_table:
        out.append(f"nftables table inet hearth missing in {st.netns} (sandboxes not isolated at L3): {up}")
    elif not st.isolation_rule:
        out.append(f"table inet hearth does not drop bridge → bridge traffic: {up}")
    elif not st.nft_in_sync:
        out.append(f"table inet hearth differs from the ruleset computed from the settings: {up} (replaces it)")
    if st.egress and st.uplink_netns_missing:
        out.append(
            f"egress is on but {where} (HEARTH_UPLINK_NETNS) does not exist: create it and connect it to the "
            "outside, or unset HEARTH_UPLINK_NETNS; then run `hearth fabric up`"
        )
    elif st.egress:
        if st.uplink_conflict:
            out.append(
                f"link {uplink_outer(st.netns)} in {where} exists but is not this fabric's uplink: delete it or "
                "choose another HEARTH_FABRIC_NETNS"
            )
        elif not st.uplink:
            out.append(f"egress is on but the uplink {uplink_outer(st.netns)}/{UPLINK_INNER} is missing: {up}")
        if not st.masquerade:
            out.append(f"egress is on but no masquerade rule for {s.internal_network}: {up}")
        if not st.root_nat:
            out.append(f"egress is on but table ip {root_table(st.netns)} in {where} is missing: {up}")
    else:
        for present, what in ((st.uplink, "the uplink"), (st.masquerade, "a masquerade rule"), (st.root_nat, "")):
            if present:
                what = what or f"table ip {root_table(st.netns)} in {where}"
                out.append(f"egress is off (HEARTH_EGRESS) but {what} exists: {up} (removes it)")
    for p in st.ports:
        if p.master != br:
            out.append(f"port {p.name} is not on bridge {br}: {up} (re-attaches it)")
        elif not p.isolated:
            out.append(f"port {p.name} is not isolated (sandboxes could reach each other at L2): {up}")
    return out
