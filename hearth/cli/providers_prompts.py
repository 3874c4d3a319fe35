"""`hearth providers check --prompts [--e2e] [--provider P]`: each real CLI answers prompts through the CLI sandbox's
agent, offline (hearth/standins/promptcheck.py: answer, refresh during a prompt, revoked credential, cancel mid-stream),
printed per provider and scenario with the timings and the failing step; with --e2e also through hearth's prompt API
(hearth/standins/promptapi.py: a real controller and CLI sandbox, the internet stand-in). Exit 1 on a failure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.providers.model import Provider
from hearth.standins import promptcheck


async def _through_api(chosen: list[Provider]) -> list[dict[str, Any]]:
    from hearth.standins import promptapi

    rows: list[dict[str, Any]] = []
    async with promptapi.world("hearth-k") as w:
        for p in chosen:
            for scenario in promptapi.SCENARIOS:
                res = await promptapi.check(w, p.name, scenario)
                timings = res.prompt.get("timings") or {}
                rows.append(
                    {
                        "provider": p.name,
                        "scenario": f"api/{scenario}",
                        "cli_version": "",
                        "status": str(res.prompt.get("status", "")),
                        "seconds_to_first_text": None,
                        "seconds_to_done": None,
                        "needs_signin": res.extra.get("credential") == "needs_signin" or None,
                        "timings": timings,
                        "failed_step": res.failed_step,
                    }
                )
    return rows


def run_prompts(chosen: list[Provider], where: Path | None, as_json: bool, api: bool = False) -> int:
    """`api`: also through hearth's prompt API (a real controller and CLI sandbox, the internet stand-in)."""
    rows: list[dict[str, Any]] = []
    real = [p for p in chosen if p.prompt is not None and p.cli is not None]
    for p in real:
        for scenario in promptcheck.SCENARIOS:
            res = promptcheck.check(p, scenario, where, prefix="hearth-k")
            final = res.extra.get("final") or {}
            rows.append(
                {
                    "provider": res.provider,
                    "scenario": scenario,
                    "cli_version": res.cli_version,
                    "status": res.status,
                    "seconds_to_first_text": res.seconds_to_first_text,
                    "seconds_to_done": res.seconds_to_done,
                    "needs_signin": final.get("needs_signin"),
                    "failed_step": res.failed_step,
                }
            )
    if api and real:
        rows += asyncio.run(_through_api(real))
    failed = not rows or any(r["failed_step"] for r in rows)
    if as_json:
        print(json.dumps({"clis": str(where) if where else None, "results": rows}, indent=2))
        return 1 if failed else 0
    out = Console()
    out.print(f"CLIs: {escape(str(where)) if where else '[red]not installed[/] (run `bash scripts/setup.sh`)'}")
    table = Table(title="prompt conformance (offline, this host, through the agent's runner)")
    for col in ("provider", "scenario", "CLI", "status", "first text", "done", "failed step"):
        table.add_column(col)
    for r in rows:
        first = "-" if r["seconds_to_first_text"] is None else f"{r['seconds_to_first_text']} s"
        done = "-" if r["seconds_to_done"] is None else f"{r['seconds_to_done']} s"
        step = escape(r["failed_step"])
        table.add_row(
            r["provider"], r["scenario"], escape(r["cli_version"]), r["status"], first, done, f"[red]{step}[/]"
        )
    out.print(table)
    return 1 if failed else 0
