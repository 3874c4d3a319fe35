"""The diagnoses: host (`diagnose(ctl)`), one session (`diagnose(ctl, session_id)`), and the verdict the session
service and the gateway attach to failures (`diagnose_session`).

Order is the contract: host checks first (config → fabric → bridge → forwarding → NAT → firewall), then the session
(state → lease → driver → link → ARP → ICMP → agent → VNC → RFB → gateway), then advisories that never explain a
running session's failure (ruleset drift, port isolation, pool capacity). So the first failure is the root cause:
with the link down, ARP, ICMP and VNC are not even tried, and `first_failure.hop == "link"`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from typing import Any

from hearth.doctor import egress, host, proxy, session
from hearth.doctor.context import BUDGET, Context, ControllerLike, Parts, Target, parts_of, run_steps
from hearth.doctor.ports import Records, Specs
from hearth.doctor.report import CheckResult, Report
from hearth.errors import HearthError, Hop
from hearth.sandbox.base import Driver
from hearth.sandbox.select import BUILDERS
from hearth.session.view import SessionNotFound

# egress: its rules, the DNS forwarder, a name upstream; proxy: the egress proxy and the providers' TLS
HOST_STEPS = [*host.STEPS, *egress.STEPS, *proxy.STEPS, *egress.ADVISORIES, *host.ADVISORIES]
SESSION_STEPS = [
    *host.STEPS,
    *egress.STEPS,
    *session.STEPS,
    host.ADVISORIES[0],
    *session.ADVISORIES,
    *egress.ADVISORIES,
    *host.ADVISORIES[1:],
]


def _driver_for(parts: Parts, name: str) -> tuple[Driver | None, str]:
    if parts.driver is not None and parts.driver.name == name:
        return parts.driver, ""
    builder = BUILDERS.get(name)
    if builder is None:
        return None, f"unknown driver {name!r}"
    try:
        return builder(parts.settings), ""
    except HearthError as exc:
        return None, exc.reason


async def resolve(parts: Parts, records: Records, specs: Specs, session_id: str) -> Target:
    """The session's view and slot, the spec its driver derives everything from, and that driver."""
    view = await records.get(session_id)  # SessionNotFound propagates
    if view.slot is not None:
        index = view.slot
    elif view.sandbox_ip:
        index = records.ipam.index_of(IPv4Address(view.sandbox_ip))
    else:
        index = 0
    slot = records.ipam.slot(index)
    spec = specs.spec(view.id, slot, view.mode)  # the one builder (it also knows the agent secret)
    drv, problem = _driver_for(parts, view.driver)
    return Target(view, slot, view.sandbox_ip or str(slot.ip), spec, drv, problem)


async def diagnose(source: ControllerLike | Parts, session_id: str | None = None, *, budget: float = BUDGET) -> Report:
    """Walk the host's path (and the session's, with `session_id`); raises SessionNotFound for an unknown id."""
    parts = parts_of(source)
    t0 = time.monotonic()
    ctx = Context(parts, deadline=t0 + budget)
    info: dict[str, Any] | None = None
    if session_id is None:
        steps = HOST_STEPS
    else:
        if parts.records is None or parts.specs is None:
            raise ValueError("diagnosing a session needs the state database (Parts.records, Parts.specs)")
        ctx.target = await resolve(parts, parts.records, parts.specs, session_id)
        v = ctx.target.view
        info = {
            "status": v.status.value,
            "driver": v.driver,
            "slot": v.slot,
            "sandbox_ip": ctx.target.ip,
            "netns": ctx.target.slot.netns,
            "port": ctx.target.port,
            "reason": v.reason,
        }
        steps = SESSION_STEPS
    checks = await run_steps(ctx, steps)
    report = Report(checks, time.monotonic() - t0, session_id, info)
    first = report.first_failure
    if first is not None and parts.metrics is not None:
        parts.metrics.doctor_failures.labels(first.hop.value).inc()
    return report


def config_report(problems: list[str], duration_s: float = 0.0) -> Report:
    """The report when the configuration is too broken to even build settings (the CLI's case)."""
    check = CheckResult(
        Hop.CONFIG,
        "config",
        False,
        "; ".join(problems),
        "fix the settings named above (`hearth config check` lists every effective setting)",
    )
    return Report([check], duration_s)


_inflight: dict[tuple[int, str], asyncio.Task[Report]] = {}


async def diagnose_session(source: ControllerLike | Parts, session_id: str) -> HearthError | None:
    """The first failing hop of a session's path as a HearthError (None when every hop passes or the session is
    unknown). For `SessionService.diagnose`: runs only checks on the path, and never the gateway check (the
    gateway calls this on a failed relay — no recursion). Concurrent calls for one session share one diagnosis."""
    parts = dataclasses.replace(parts_of(source), gateway=False, verdict=True)
    key = (id(parts.records), session_id)
    task = _inflight.get(key)
    if task is None or task.done():
        task = asyncio.ensure_future(diagnose(parts, session_id))
        _inflight[key] = task
        task.add_done_callback(lambda _t: _inflight.pop(key, None) if _inflight.get(key) is _t else None)
    try:
        report = await asyncio.shield(task)
    except SessionNotFound:
        return None
    return report.error()


def verdict(parts: Parts) -> Callable[[str], Awaitable[HearthError | None]]:
    """What lets the session service name the first broken hop in failure reasons and 4502 close reasons."""

    async def first_broken_hop(session_id: str) -> HearthError | None:
        return await diagnose_session(parts, session_id)

    return first_broken_hop
