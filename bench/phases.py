"""Where a drain's wall time goes (bench/direct_ramp.py --phases): each step of ending a session, wrapped to count
its calls and sum their wall time (concurrent calls add up, so a step's sum over the drain's seconds is how many
sessions were in it on average). Steps that moved away are skipped, not errors: the code is being refactored."""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from typing import Any

STEPS = (  # (module, attribute path): wrapped where they are looked up at call time
    ("hearth.session.service", "SessionService.end"),
    ("hearth.session.records", "SessionRecords.end_many"),  # a drain's group commit: a batch to `cancelled`
    ("hearth.lifecycle.manager", "SandboxManager.end"),
    ("hearth.lifecycle.sandbox", "Sandbox.end"),
    ("hearth.sandbox.netns", "NetnsDriver.destroy"),
    ("hearth.sandbox.netns", "stop_sandbox_processes"),
    ("hearth.sandbox.netns", "remove_workdir"),
    ("hearth.fabric.ports", "remove_port"),
    ("hearth.fabric.netlink", "remove_netns"),
    ("hearth.egress.gate", "EgressGate.revoke"),
    ("hearth.fabric.ipam", "Ipam.release"),
    ("hearth.fabric.ipam", "Ipam._release"),  # the releases arriving together: one transaction
    ("hearth.lifecycle.rows", "SandboxRows.delete_quietly"),
    ("hearth.lifecycle.rows", "SandboxRows._delete"),  # the row deletes arriving together: one transaction
    ("hearth.store.db", "Database.run"),  # queued for the store's executor and run
    ("hearth.store.db", "Database.offload"),
    ("hearth.store.db", "Database.call"),  # run only (every transaction, also those of run/offload)
)
TOTALS: dict[str, list[float]] = {}  # step → [calls, seconds]
_counting = [False]


def _wrap(name: str, fn: Any) -> Any:
    def add(t0: float) -> None:
        if _counting[0]:
            row = TOTALS.setdefault(name, [0, 0.0])
            row[0] += 1
            row[1] += time.monotonic() - t0

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return await fn(*args, **kwargs)
            finally:
                add(t0)

        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            add(t0)

    return timed


def install() -> list[str]:
    """Wrap every step still found (before the controller is built: callbacks bind methods when pushed)."""
    done = []
    for module, path in STEPS:
        try:
            owner: Any = importlib.import_module(module)
        except ImportError:
            continue
        *outer, attr = path.split(".")
        for part in outer:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, attr):
            continue
        setattr(owner, attr, _wrap(path, getattr(owner, attr)))
        done.append(path)
    return done


def start() -> None:
    TOTALS.clear()
    _counting[0] = True


def report() -> dict[str, list[float]]:
    return {k: [int(v[0]), round(v[1], 2)] for k, v in TOTALS.items()}
