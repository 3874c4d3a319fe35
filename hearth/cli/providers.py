"""`hearth providers list|check`: the provider definitions, and the conformance of the real CLIs on this host.

`check` runs the provider conformance (hearth/standins/conformance.py, the same as tests/providers/
test_conformance.py) against the installed CLIs — the host's pinned CLIs from scripts/setup.sh, or `--image`: the
ones in the built guest image — in offline namespaces of its own with the providers' network stood in, and prints per
provider and flow the CLI version, whether the sign-in URL was captured, whether the credentials were written and
pushed, and the failing step — so a CLI upgrade that changed its screens or paths shows at once. Exit 1 on a failure.
`check --e2e` signs in end to end through a real controller and the internet stand-in (hearth/cli/providers_e2e.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.cli.common import fail, settings_or_exit
from hearth.guest import clis
from hearth.providers.model import FlowName
from hearth.providers.registry import ProviderError, get, load

providers_app = typer.Typer(help="Provider definitions and their real CLIs.", no_args_is_help=True)


@providers_app.command("list")
def list_cmd() -> None:
    """Every provider definition: its CLI package, flows and the sign-in modes they give."""
    table = Table(title="providers")
    for col in ("name", "CLI", "flows", "modes"):
        table.add_column(col)
    for p in load().values():
        cli = f"{p.cli.package} ({p.cli.bin})" if p.cli else "-"
        table.add_row(p.name, escape(cli), ", ".join(f.value for f in p.flows), ", ".join(m.value for m in p.modes()))
    Console().print(table)


def _clis_dir(image: bool) -> Path | None:
    if not image:
        return clis.installed()
    root = settings_or_exit().images / "rootfs" / clis.GUEST_CLIS.lstrip("/")
    return root if (root / "node_modules" / ".bin").is_dir() else None


@providers_app.command()
def check(
    provider: str = typer.Option("", "--provider", help="only this provider"),
    flow: str = typer.Option("", "--flow", help="only this flow (loopback, paste_code, device_code)"),
    image: bool = typer.Option(False, "--image", help="check the CLIs in the built guest image, not the host's"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    e2e: bool = typer.Option(
        False, "--e2e", help="sign in end to end through a real controller and the internet stand-in, every mode"
    ),
    prompts: bool = typer.Option(
        False,
        "--prompts",
        help="answer prompts through the CLI sandbox's agent: answer, refresh, revoked, cancel (--e2e: and the API)",
    ),
) -> None:
    """Run the provider conformance on this host (needs root: it creates its own network namespaces)."""
    from hearth.standins.conformance import check as check_flow

    if os.geteuid() != 0:
        fail("hearth providers check needs root (it creates network namespaces)", 2)
    if e2e and not prompts:
        from hearth.cli.providers_e2e import run_e2e

        try:
            picked = [get(load(), provider)] if provider else list(load().values())
        except ProviderError as exc:
            fail(str(exc), 2)
        raise typer.Exit(run_e2e(picked, as_json))
    if prompts:
        from hearth.cli.providers_prompts import run_prompts

        try:
            picked = [get(load(), provider)] if provider else [p for p in load().values() if p.cli is not None]
        except ProviderError as exc:
            fail(str(exc), 2)
        raise typer.Exit(run_prompts(picked, _clis_dir(image), as_json, api=e2e))
    try:
        defs = load()
        chosen = [get(defs, provider)] if provider else [p for p in defs.values() if p.cli is not None]
        flows = [FlowName(flow)] if flow else None
    except ProviderError as exc:
        fail(str(exc), 2)
    except ValueError:
        fail(f"unknown flow {flow!r}; use one of: {', '.join(f.value for f in FlowName)}", 2)
    where = _clis_dir(image)
    rows: list[dict[str, Any]] = []
    for p in chosen:
        for f in flows or list(p.flows):
            if f not in p.flows:
                rows.append({"provider": p.name, "flow": f.value, "failed_step": f"definition: no {f.value} flow"})
                continue
            res = check_flow(p, f, where, netns_prefix="hearth-k")
            rows.append(
                {
                    "provider": res.provider,
                    "flow": res.flow,
                    "cli_version": res.cli_version,
                    "url_captured": res.url_captured,
                    "url_host": res.url_host,
                    "seconds_to_url": res.seconds_to_url,
                    "prompt": res.prompt,
                    "credentials_written": res.credentials_written,
                    "signed_in": "status" in res.extra and not res.failed_step,  # the CLI's own check, delivered files
                    "failed_step": res.failed_step,
                }
            )
    failed = any(r.get("failed_step") for r in rows)
    if as_json:
        print(json.dumps({"clis": str(where) if where else None, "results": rows}, indent=2))
        raise typer.Exit(1 if failed else 0)
    out = Console()
    out.print(f"CLIs: {escape(str(where)) if where else '[red]not installed[/] (run `bash scripts/setup.sh`)'}")
    table = Table(title="provider conformance (offline, this host)")
    for col in ("provider", "flow", "CLI", "URL", "credentials", "signed in", "failed step"):
        table.add_column(col)
    for r in rows:
        url = f"yes ({r.get('url_host')}, {r.get('seconds_to_url')} s)" if r.get("url_captured") else "no"
        creds = {True: "yes", False: "no", None: "not checked"}[r.get("credentials_written")]
        step = r.get("failed_step") or ""
        signed = "yes" if r.get("signed_in") else "no"
        version = escape(str(r.get("cli_version", "")))
        table.add_row(r["provider"], r["flow"], version, url, creds, signed, f"[red]{escape(step)}[/]")
    out.print(table)
    raise typer.Exit(1 if failed else 0)
