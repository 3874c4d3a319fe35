"""`hearth fabric up|down|status`."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.cli.common import fail, settings_or_exit
from hearth.errors import HearthError
from hearth.fabric.fabric import Fabric

fabric_app = typer.Typer(help="The sandbox network fabric (its own network namespace).", no_args_is_help=True)


@fabric_app.command()
def up() -> None:
    """Create or repair the fabric (idempotent; a half-built fabric is rolled back)."""
    s = settings_or_exit()
    try:
        asyncio.run(Fabric(s).up())
    except HearthError as exc:
        fail(exc.reason)
    Console().print(f"[green]fabric up[/]: netns {s.fabric_netns}, {s.bridge_device} {s.bridge_ip}/{s.prefixlen}")


@fabric_app.command()
def down(force: bool = typer.Option(False, "--force", help="also when sandbox ports are still attached")) -> None:
    """Remove the fabric (idempotent)."""
    s = settings_or_exit()
    try:
        asyncio.run(Fabric(s).down(force=force))
    except HearthError as exc:
        fail(exc.reason)
    Console().print(f"[green]fabric down[/]: netns {s.fabric_netns} removed")


@fabric_app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """What exists, and the fix for anything missing or wrong. Exit 1 when there is a problem."""
    s = settings_or_exit()
    st = asyncio.run(Fabric(s).status())
    if as_json:
        print(json.dumps(st.as_dict(), indent=2))
    else:
        t = Table(title=f"fabric {s.fabric_netns}")
        t.add_column("item")
        t.add_column("state")
        for k, v in st.as_dict().items():
            if k not in ("problems", "ports", "netns"):
                t.add_row(k, str(v))
        t.add_row("ports", ", ".join(f"{p['name']}({p['state']})" for p in st.ports) or "none")
        Console().print(t)
        for p in st.problems:
            Console().print(f"[red]•[/] {escape(p)}")
    raise typer.Exit(0 if st.ok else 1)
