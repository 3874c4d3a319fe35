"""`hearth providers check --e2e [--provider P]`: the product's main path on this host, offline.

Brings up the internet stand-in (hearth/standins/internet.py), a throwaway data dir and a real controller whose
fabric's uplink leads into it, and signs a person in (Debian's Chromium through Playwright) with each provider in
each mode its definition declares (hearth/standins/e2e.py); prints per provider/mode the result and the timings,
and checks that nothing it made is left behind. Needs root, Debian's chromium and the `test` extra (Playwright).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.providers.model import Provider

PREFIX = "hearth-e"


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


async def _run_all(chosen: list[Provider], prefix: str) -> list[dict[str, Any]]:
    from hearth.standins.e2e import e2e_run, sign_in

    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    async with e2e_run(prefix=prefix) as run:
        rows.append(
            {"provider": "-", "mode": "bring-up", "ok": True, "seconds": {"up": round(time.monotonic() - t0, 3)}}
        )
        for p in chosen:
            for mode in p.modes():
                out = await sign_in(run, p.name, mode, f"e2e-{p.name}-{mode.value}".replace("_", "-"))
                rows.append(
                    {
                        "provider": p.name,
                        "mode": mode.value,
                        "flow": out.flow,
                        "ok": out.ok,
                        "states": out.states,
                        "seconds": out.seconds,
                        "failed_step": out.failed,
                        "requests": len(out.seen),
                    }
                )
    return rows


def run_e2e(chosen: list[Provider], as_json: bool) -> int:
    """Run, print, and return the exit status (1 on any failure or leftover)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("hearth providers check --e2e drives Chromium with Playwright: pip install 'hearth[test]'")
        return 2
    if not os.path.exists("/usr/bin/chromium"):
        print("hearth providers check --e2e needs Debian's chromium: run `bash scripts/setup.sh`")
        return 2
    prefix = f"{PREFIX}{secrets.token_hex(2)}"
    before = _netns()
    t0 = time.monotonic()
    try:
        rows = asyncio.run(_run_all(chosen, prefix))
    except Exception as exc:  # the bring-up itself failed: say which step, no traceback
        rows = [{"provider": "-", "mode": "bring-up", "ok": False, "failed_step": f"{type(exc).__name__}: {exc}"}]
    left = sorted(n for n in _netns() - before if n.startswith(prefix))
    total = round(time.monotonic() - t0, 1)
    failed = bool(left) or not all(r.get("ok") for r in rows)
    if as_json:
        print(json.dumps({"results": rows, "leftovers": left, "seconds": total}, indent=2))
        return 1 if failed else 0
    out = Console()
    table = Table(title="sign-ins end to end through the internet stand-in (this host, offline)")
    for col in ("provider", "mode", "flow", "result", "timings (s from start)", "failed step"):
        table.add_column(col)
    for r in rows:
        result = "[green]completed[/]" if r.get("ok") else "[red]failed[/]"
        if r["mode"] == "bring-up":
            result = "[green]up[/]" if r.get("ok") else "[red]failed[/]"
        times = ", ".join(f"{k} {v:g}" for k, v in (r.get("seconds") or {}).items())
        step = escape(str(r.get("failed_step") or ""))
        table.add_row(r["provider"], r["mode"], r.get("flow", ""), result, times, f"[red]{step}[/]")
    out.print(table)
    out.print(f"total {total} s; leftovers: {', '.join(left) if left else 'none'}")
    return 1 if failed else 0
