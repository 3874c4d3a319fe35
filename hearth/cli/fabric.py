"""`hearth fabric up|down|status`: the sandbox network fabric from the command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hearth.config import Settings, load_settings
from hearth.errors import ConfigError, HearthError
from hearth.fabric.base import FabricStatus
from hearth.fabric.fabric import Fabric

T = TypeVar("T")

fabric_app = typer.Typer(
    help="The sandbox network fabric: its own network namespace with a bridge, forwarding and nftables (needs root).",
    no_args_is_help=True,
)


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        err = Console(stderr=True)
        err.print("[bold red]configuration problems:[/]")
        for problem in exc.problems:
            err.print(f"  • {escape(problem)}")
        raise typer.Exit(2) from None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except HearthError as exc:
        _fail(exc.reason, 1)


@fabric_app.command()
def up() -> None:
    """Create the fabric or repair its drift (idempotent; a half-built fabric is rolled back)."""
    s = _settings()
    _run(Fabric(s).up())
    egress = f", egress via {s.uplink_network}" if s.egress else ""
    Console().print(
        f"[green]fabric up[/]: namespace {s.fabric_netns}, bridge {s.bridge_device} {s.bridge_ip}/{s.prefixlen}{egress}"
    )


@fabric_app.command()
def down(
    force: bool = typer.Option(False, "--force", help="also while sandbox ports are still attached (cuts them off)"),
) -> None:
    """Remove the fabric: uplink, nftables tables, bridge, namespace (idempotent)."""
    s = _settings()
    _run(Fabric(s).down(force=force))
    Console().print(f"[green]fabric down[/]: namespace {s.fabric_netns} and everything in it removed")


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def render(st: FabricStatus) -> Table:
    """The human view of a status."""
    t = Table(title=f"fabric {st.netns}", show_header=False)
    t.add_column("item", style="bold")
    t.add_column("state")
    t.add_row("namespace", _yes(st.netns_exists))
    kind = "" if st.bridge_kind in (None, "bridge") else f" (a {escape(str(st.bridge_kind))} link!)"
    t.add_row(f"bridge {escape(st.bridge)}", f"{_yes(st.bridge_exists)}{kind}, up: {_yes(st.bridge_up)}")
    t.add_row("bridge addresses", escape(", ".join(st.bridge_addresses)) or "[red]none[/]")
    t.add_row("IPv4 forwarding", _yes(st.forwarding))
    t.add_row("nftables inet hearth", f"{_yes(st.nft_table)}, as computed: {_yes(st.nft_in_sync)}")
    t.add_row("bridge → bridge drop", _yes(st.isolation_rule))
    t.add_row("egress (configured)", "on" if st.egress else "off")
    t.add_row("uplink / masquerade / host NAT", f"{_yes(st.uplink)} / {_yes(st.masquerade)} / {_yes(st.root_nat)}")
    ports = [
        f"{escape(p.name)} (on {escape(p.master or '-')}, {'isolated' if p.isolated else '[red]not isolated[/]'}, "
        f"{escape(p.oper_state)})"
        for p in st.ports
    ]
    t.add_row("sandbox ports", "\n".join(ports) or "none")
    return t


@fabric_app.command()
def status(as_json: bool = typer.Option(False, "--json", help="print the status as JSON")) -> None:
    """What exists, and the fix for anything missing or wrong. Exit status 1 when there is a problem."""
    st = _run(Fabric(_settings()).status())
    if as_json:
        print(json.dumps(st.as_dict(), indent=2))
    else:
        out = Console()
        out.print(render(st))
        for problem in st.problems:
            out.print(f"[red]•[/] {escape(problem)}")
        if st.ok:
            out.print("[green]no problems[/]")
    raise typer.Exit(0 if st.ok else 1)
