"""Session checks, in path order: session state, lease, driver, link, ARP (neighbour, address conflict), ICMP,
agent, VNC, RFB, gateway — plus the port-isolation advisory.

Every probe runs from inside the fabric namespace, where the controller itself talks to sandboxes. For namespace
sandboxes the guest side is inspectable too (its eth0, sysctls and processes), which turns a symptom ("no ARP
reply") into the concrete fix ("arp_ignore=8 on eth0 in hearth-s0: set it to 0").
"""

from __future__ import annotations

import asyncio
from typing import Any

from hearth.doctor import probes
from hearth.doctor.context import Context, Step, Target, no_desktop, sandbox_gone
from hearth.doctor.gateway import GATEWAY_STEP, RFB_TIMEOUT
from hearth.doctor.report import Finding
from hearth.errors import Hop
from hearth.fabric.dial import connect
from hearth.fabric.ports import GUEST_IFNAME
from hearth.lifecycle.readiness import http_get_json, rfb_handshake
from hearth.rfb.client import RfbError

OK_NEIGHBOUR = ("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT")


def _agent_log(t: Target) -> str:
    return str(t.spec.workdir / "logs" / "agent.log")


def _recreate(t: Target) -> str:
    return f"cancel session {t.view.id} and start a new one"


# ---- session, lease, driver -------------------------------------------------------------------------------
async def session(ctx: Context) -> Finding:
    t = ctx.need_target()
    v = t.view
    shown = f"status {v.status.value}, driver {v.driver}, slot {v.slot}, address {t.ip}"
    if not v.status.terminal:
        note = " (still booting: later failures may be transient)" if v.status.booting else ""
        return Finding.good(shown + note)
    hop = Hop(v.hop) if v.hop in {h.value for h in Hop} else Hop.DRIVER
    if v.status.value != "failed":
        return Finding.bad(f"the session has ended ({shown})", "start a new session", hop=hop)
    keep = "" if ctx.settings.keep_failed else "; HEARTH_KEEP_FAILED=true keeps failed sandboxes for `hearth doctor`"
    return Finding.bad(f"the session failed: {v.reason or 'no reason recorded'}", f"start a new session{keep}", hop=hop)


async def lease(ctx: Context) -> Finding:
    t = ctx.need_target()
    records = ctx.parts.records
    assert records is not None
    mine = [le for le in await records.ipam.leases() if le.session_id == t.view.id]
    if not mine:
        return Finding.bad(
            f"session {t.view.id} holds no lease for slot {t.slot.index} ({t.ip})",
            f"the lease was released (reconciler?) while the session is {t.view.status.value}: {_recreate(t)}",
            hop=Hop.FABRIC,
        )
    if str(t.slot.ip) != t.ip:
        s = ctx.settings
        return Finding.bad(
            f"slot {t.slot.index} maps to {t.slot.ip} with IP_POOL_START={s.ip_pool_start}, but the sandbox was "
            f"given {t.ip}: the pool settings changed while sessions were running",
            "restore the IP_POOL_START the running sessions were created with, or end them before changing the pool",
            hop=Hop.CONFIG,
        )
    return Finding.good(f"slot {t.slot.index} → {t.ip}, MAC {t.slot.mac}")


async def driver(ctx: Context) -> Finding:
    t = ctx.need_target()
    if t.driver is None:
        return Finding.bad(f"cannot inspect the {t.view.driver} sandbox: {t.driver_problem}", "run `hearth drivers`")
    alive = await t.driver.alive(t.spec)
    procs = await asyncio.to_thread(probes.processes_in, t.guest_netns) if t.guest_netns else []
    shown = ", ".join(f"{p.comm}({p.pid},{p.state})" for p in procs[:8]) or "none"
    if not alive:
        return Finding.bad(
            f"the {t.view.driver} sandbox's top process is not running (processes in {t.slot.netns}: {shown})",
            f"the sandbox died (see {_agent_log(t)}); {_recreate(t)}",
        )
    return Finding.good(f"{t.view.driver} sandbox running; processes: {shown}")


# ---- link -------------------------------------------------------------------------------------------------
async def link(ctx: Context) -> Finding:
    t, s, ns = ctx.need_target(), ctx.settings, ctx.fabric
    seen = await asyncio.to_thread(probes.links, ns, (t.port, s.bridge_device))
    port = seen.get(t.port)
    if port is None:
        if t.view.status.booting:
            return Finding.bad(f"port {t.port} not created yet in {ns}", "the session is still booting: retry shortly")
        return Finding.bad(
            f"port {t.port} missing in fabric namespace {ns}", f"the sandbox lost its port: {_recreate(t)}"
        )
    data: dict[str, Any] = {"port": port.describe()}
    guest = None
    if t.guest_netns and probes.netns_exists(t.guest_netns):
        guest = (await asyncio.to_thread(probes.links, t.guest_netns, (GUEST_IFNAME,))).get(GUEST_IFNAME)
        data["guest"] = guest.describe() if guest else "missing"
    shown = port.describe() + (f"; guest {data['guest']}" if "guest" in data else "")
    if not port.up:
        return Finding.bad(
            f"{t.port} is administratively DOWN ({shown})", f"ip -n {ns} link set {t.port} up", data=data
        )
    if port.master != s.bridge_device:
        return Finding.bad(
            f"{t.port} is not on bridge {s.bridge_device} (master: {port.master or 'none'}; {shown})",
            f"ip -n {ns} link set {t.port} master {s.bridge_device} && "
            f"ip -n {ns} link set {t.port} type bridge_slave isolated on (or `hearth fabric up`, which re-attaches)",
            data=data,
        )
    if not port.carrier:
        if t.guest_netns:
            fix = f"the guest end is down: ip -n {t.guest_netns} link set {GUEST_IFNAME} up, or {_recreate(t)}"
        else:
            fix = f"no VM holds TAP {t.port} open (the VM is not running): {_recreate(t)}"
        return Finding.bad(f"{t.port} has no carrier ({shown})", fix, data=data)
    if port.port_state not in (None, "forwarding"):
        return Finding.bad(
            f"bridge port {t.port} is in state {port.port_state} ({shown})",
            f"the bridge runs STP: wait for forwarding, or ip -n {ns} link set {s.bridge_device} type bridge stp_state 0",
            data=data,
        )
    want = f"{t.ip}/{t.slot.prefixlen}"
    if t.guest_netns and (guest is None or not guest.up or want not in guest.addresses):
        return Finding.bad(
            f"guest {GUEST_IFNAME} in {t.guest_netns} is not configured: expected UP with {want} ({shown})",
            f"the sandbox's network was changed from inside: {_recreate(t)}",
            data=data,
        )
    return Finding.good(shown, data=data)


# ---- ARP ------------------------------------------------------------------------------------------------
async def _guest_arp_hint(ctx: Context, t: Target) -> str:
    if not t.guest_netns or not probes.netns_exists(t.guest_netns):
        return (
            f"the guest does not answer ARP for {t.ip}: its eth0 must carry {t.ip}/{t.slot.prefixlen} (kernel ip= "
            "argument only; nothing else may reconfigure eth0) and the guest must be running"
        )
    g = t.guest_netns
    ignore = {}
    for scope in ("all", GUEST_IFNAME):
        ignore[scope] = await asyncio.to_thread(probes.sysctl, g, f"net/ipv4/conf/{scope}/arp_ignore")
    eth = (await asyncio.to_thread(probes.links, g, (GUEST_IFNAME,))).get(GUEST_IFNAME)
    if eth is not None and eth.noarp:
        return f"{GUEST_IFNAME} in {g} has ARP off (NOARP): ip -n {g} link set {GUEST_IFNAME} arp on"
    for scope, value in ignore.items():
        if value is not None and value.isdigit() and int(value) >= 8:
            return (
                f"{GUEST_IFNAME} in {g} ignores every ARP request (net.ipv4.conf.{scope}.arp_ignore={value}): "
                f"ip netns exec {g} sysctl -w net.ipv4.conf.{scope}.arp_ignore=0"
            )
    if eth is not None and f"{t.ip}/{t.slot.prefixlen}" not in eth.addresses:
        return f"{GUEST_IFNAME} in {g} carries {', '.join(eth.addresses) or 'no address'}, not {t.ip}: {_recreate(t)}"
    return f"the guest ({g}) does not answer ARP for {t.ip} (arp_ignore {ignore}); {_recreate(t)}"


async def neighbour(ctx: Context) -> Finding:
    t, s, ns = ctx.need_target(), ctx.settings, ctx.fabric
    await asyncio.to_thread(probes.nudge, ns, t.ip)
    probe_error = ""
    try:
        replies = await asyncio.to_thread(probes.arp_probe, ns, s.bridge_device, str(s.bridge_ip), t.ip)
    except OSError as exc:
        replies, probe_error = [], f"raw ARP probe unavailable ({exc}); "
    ctx.memo["arp_replies"] = replies
    entry = await asyncio.to_thread(probes.neighbour, ns, t.ip)
    ctx.memo["neighbour"] = entry
    state = entry.state if entry else "none"
    kernel = f"kernel neighbour {t.ip}: {state}, lladdr {entry.lladdr if entry and entry.lladdr else 'none'}"
    data = {"replies": replies, "state": state, "lladdr": entry.lladdr if entry else None}
    if replies:
        return Finding.good(f"ARP reply from {', '.join(replies)}; {kernel}", data=data)
    if probe_error and any(st in state for st in OK_NEIGHBOUR):
        return Finding.good(f"{probe_error}{kernel}", data=data)
    return Finding.bad(
        f"no ARP reply for {t.ip} on {s.bridge_device} to a fresh request; {probe_error}{kernel}",
        await _guest_arp_hint(ctx, t),
        data=data,
    )


async def conflict(ctx: Context) -> Finding:
    t, s, ns = ctx.need_target(), ctx.settings, ctx.fabric
    replies: list[str] = ctx.memo.get("arp_replies", [])
    entry: probes.Neighbour | None = ctx.memo.get("neighbour")
    own = t.slot.mac.lower()
    strangers = [m for m in replies if m.lower() != own]
    if strangers:
        where = await asyncio.to_thread(probes.fdb_ports, ns, s.bridge_device, replies)
        shown = ", ".join(
            f"{m} (port {where.get(m.lower(), '?')}{', the sandbox' if m.lower() == own else ''})" for m in replies
        )
        culprits = sorted({where[m.lower()] for m in strangers if m.lower() in where and where[m.lower()] != t.port})
        fix = (
            f"another host claims {t.ip}: remove it from {s.bridge_device} (ip -n {ns} link del {culprits[0]}) or "
            "give it an address outside IP_POOL_START..IP_POOL_END"
            if culprits
            else f"another host claims {t.ip} ({', '.join(strangers)}): find it and change its address"
        )
        return Finding.bad(f"{t.ip} is answered by {len(replies)} MAC(s): {shown}; sandbox MAC is {own}", fix)
    if entry is not None and entry.lladdr and entry.lladdr.lower() != own:
        return Finding.bad(
            f"the kernel neighbour entry for {t.ip} points to {entry.lladdr} ({entry.state}), not the sandbox's {own}",
            f"ip -n {ns} neigh del {t.ip} dev {s.bridge_device} (and find the host that answered as {entry.lladdr})",
        )
    return Finding.good(f"only the sandbox ({own}) answers for {t.ip}")


# ---- ICMP, agent, VNC, RFB --------------------------------------------------------------------------------
async def icmp(ctx: Context) -> Finding:
    t = ctx.need_target()
    rtt = await asyncio.to_thread(probes.icmp_echo, ctx.fabric, t.ip, 0.4)
    if rtt is None:
        return Finding.bad(
            f"no ICMP echo reply from {t.ip} within 0.4s (ARP answered)",
            f"the guest answers ARP but not IP: a firewall inside the guest drops it, or its route back to "
            f"{ctx.settings.bridge_ip} is wrong",
        )
    return Finding.good(f"echo reply from {t.ip} in {rtt * 1000:.2f} ms", data={"rtt_ms": round(rtt * 1000, 3)})


def _agent_proc(ctx: Context, t: Target) -> probes.Proc | None:
    if not t.guest_netns:
        return None
    procs = probes.processes_in(t.guest_netns)
    return next((p for p in procs if p.comm.startswith("python") and "hearth_agent" in p.cmdline), None)


async def agent(ctx: Context) -> Finding:
    t, s = ctx.need_target(), ctx.settings
    where = f"{t.ip}:{s.agent_port}"
    try:
        status, body = await asyncio.wait_for(http_get_json(ctx.fabric, t.ip, s.agent_port, "/health", 0.7), 0.7)
    except (OSError, TimeoutError, ValueError) as exc:
        proc = await asyncio.to_thread(_agent_proc, ctx, t)
        what = "connection refused" if isinstance(exc, ConnectionRefusedError) else type(exc).__name__
        if proc is not None and proc.state == "T":
            return Finding.bad(
                f"agent at {where}: {what}; its process {proc.pid} is stopped (state T)",
                f"resume it: kill -CONT {proc.pid} — or {_recreate(t)}",
            )
        seen = f"process {proc.pid} state {proc.state}" if proc else "no agent process" if t.guest_netns else ""
        return Finding.bad(
            f"agent at {where} does not answer GET /health ({what}{'; ' + seen if seen else ''})",
            f"the guest agent is {'hung' if proc else 'not running'}: see {_agent_log(t)}; {_recreate(t)}",
        )
    ctx.memo["health"] = body if isinstance(body, dict) else {}
    services = ctx.memo["health"].get("services", {})
    shown = ", ".join(f"{n} {v.get('state')}" for n, v in services.items()) or "no services"
    if status != 200:
        return Finding.bad(f"agent at {where} answered HTTP {status}", f"see {_agent_log(t)}")
    # Xvfb (HEARTH_VNC_SERVER=x11vnc) is a hop of its own; Xvnc is the VNC server too: the vnc hop names it.
    xvfb = services.get("xvfb", {})
    if not t.view.status.booting and "xvfb" in services and xvfb.get("state") != "running":
        return Finding.bad(
            f"the display is not running ({shown}; xvfb restarts {xvfb.get('restarts')}, last exit "
            f"{xvfb.get('last_exit')})",
            f"Xvfb keeps failing: see {_agent_log(t)}",
        )
    return Finding.good(f"GET /health 200: {shown}")


_PROGRAM = {"xvnc": "Xvnc", "x11vnc": "x11vnc"}


def _vnc_name(ctx: Context) -> str:
    """The sandbox's VNC server as the agent reports it: x11vnc (HEARTH_VNC_SERVER=x11vnc), else Xvnc."""
    return "x11vnc" if "x11vnc" in ctx.memo.get("health", {}).get("services", {}) else "xvnc"


def _x11vnc(ctx: Context) -> str:
    name = _vnc_name(ctx)
    v = ctx.memo.get("health", {}).get("services", {}).get(name)
    if not v:
        return ""
    return (
        f"agent reports {_PROGRAM[name]} {v.get('state')}, {v.get('restarts')} restarts, last exit {v.get('last_exit')}"
    )


async def vnc(ctx: Context) -> Finding:
    t, s = ctx.need_target(), ctx.settings
    try:
        sock = await connect(ctx.fabric, t.ip, s.rfb_port, 0.5)
    except (OSError, TimeoutError) as exc:
        what = "connection refused" if isinstance(exc, ConnectionRefusedError) else type(exc).__name__
        agent_says = _x11vnc(ctx)
        return Finding.bad(
            f"nothing accepts {t.ip}:{s.rfb_port} ({what}{'; ' + agent_says if agent_says else ''})",
            f"{_PROGRAM[_vnc_name(ctx)]} is not listening: see {_agent_log(t)} (the agent restarts it with back-off); if it keeps "
            f"failing, something else may hold port {s.rfb_port} in {t.slot.netns}",
        )
    sock.close()
    return Finding.good(f"{t.ip}:{s.rfb_port} accepts TCP" + (f" ({_x11vnc(ctx)})" if _x11vnc(ctx) else ""))


async def rfb(ctx: Context) -> Finding:
    t, s = ctx.need_target(), ctx.settings
    try:
        init = await asyncio.wait_for(rfb_handshake(ctx.fabric, t.ip, s.rfb_port, RFB_TIMEOUT), RFB_TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, RfbError) as exc:
        return Finding.bad(
            f"{t.ip}:{s.rfb_port} accepts TCP but RFB does not complete ({type(exc).__name__}: {exc})",
            f"{_PROGRAM[_vnc_name(ctx)]} is hung or another server holds the port: see {_agent_log(t)}; {_recreate(t)}",
        )
    return Finding.good(f"{init.version}, {init.width}x{init.height}, desktop {init.name!r}")


# ---- advisory ---------------------------------------------------------------------------------------------
async def isolation(ctx: Context) -> Finding:
    t, ns = ctx.need_target(), ctx.fabric
    port = (await asyncio.to_thread(probes.links, ns, (t.port,))).get(t.port)
    if port is None or port.isolated is None:
        return Finding.bad(f"{t.port} is not a bridge port", f"`hearth fabric up` re-attaches it; or {_recreate(t)}")
    if not port.isolated:
        return Finding.bad(
            f"bridge port {t.port} is not isolated: this sandbox can reach others at L2",
            f"ip -n {ns} link set {t.port} type bridge_slave isolated on (or `hearth fabric up`)",
        )
    return Finding.good(f"{t.port} isolated")


# ---- when to skip -----------------------------------------------------------------------------------------
def _no_store(ctx: Context) -> str | None:
    return "no state database" if ctx.parts.records is None else sandbox_gone(ctx)


STEPS = [
    Step("session", Hop.DRIVER, session, 0.3),
    Step("lease", Hop.FABRIC, lease, 0.5, skip=_no_store),
    Step(
        "driver", Hop.DRIVER, driver, 0.5, skip=sandbox_gone, timeout_hint="the sandbox does not respond to inspection"
    ),
    Step("link", Hop.LINK, link, 0.5, needs=("fabric namespace",), skip=sandbox_gone),
    Step("neighbour", Hop.ARP, neighbour, 0.8, needs=("bridge", "link"), skip=sandbox_gone),
    Step("address conflict", Hop.ARP, conflict, 0.4, needs=("neighbour",), skip=sandbox_gone),
    Step("icmp", Hop.ICMP, icmp, 0.5, needs=("neighbour",), skip=sandbox_gone),
    Step("agent", Hop.AGENT, agent, 0.9, needs=("neighbour",), skip=sandbox_gone, timeout_hint="the agent is hung"),
    Step("vnc", Hop.VNC, vnc, 0.6, needs=("neighbour",), skip=no_desktop),
    Step(
        "rfb",
        Hop.RFB,
        rfb,
        RFB_TIMEOUT + 0.1,
        needs=("vnc",),
        skip=no_desktop,
        timeout_hint="the VNC server (Xvnc/x11vnc) is hung",
    ),
    GATEWAY_STEP,
]
ADVISORIES = [Step("port isolation", Hop.LINK, isolation, 0.3, needs=("link",), on_path=False, skip=sandbox_gone)]
