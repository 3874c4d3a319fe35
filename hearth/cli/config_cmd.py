"""`hearth config check`: the effective settings, where each came from, and every problem with its fix."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.cluster.pidns import sandboxes_die_with_me
from hearth.config import load_settings, origins
from hearth.errors import ConfigError

config_app = typer.Typer(help="Inspect and check the configuration.", no_args_is_help=True)


@config_app.command("check")
def check(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    env_file: Path = typer.Option(Path(".env"), help="dotenv file read after the environment"),
) -> None:
    """Print the effective settings and their sources; exit 2 naming the fix when anything is inconsistent."""
    out = Console()
    try:
        settings = load_settings(env_file=env_file)
    except ConfigError as exc:
        if as_json:
            print(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
        else:
            Console(stderr=True).print("[bold red]configuration problems:[/]")
            for p in exc.problems:
                Console(stderr=True).print(f"  • {escape(p)}")
        raise typer.Exit(2) from None
    rows = origins(settings, env_file=env_file)
    warnings = [w for w in (sandboxes_die_with_me(),) if w]  # valid, but sandboxes would not outlive a restart
    if as_json:
        print(json.dumps({"ok": True, "settings": [r.__dict__ for r in rows], "warnings": warnings}, indent=2))
        return
    table = Table(title="hearth effective configuration")
    for col in ("variable", "value", "source"):
        table.add_column(col)
    for r in rows:
        value = escape(r.value)  # a value is text, never rich markup ("[/]" in a URL once crashed the check)
        table.add_row(r.variable, value, r.source if r.source == "default" else f"[green]{r.source}[/]")
    out.print(table)
    for w in warnings:
        Console(stderr=True).print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    out.print("[green]configuration OK[/]")
