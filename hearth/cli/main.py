"""`hearth` — the command line."""

from __future__ import annotations

import asyncio
import sys

import typer
from rich.console import Console
from rich.markup import escape

from hearth import log
from hearth.cli.cluster import edge, node_app
from hearth.cli.common import settings_or_exit
from hearth.cli.config_cmd import config_app
from hearth.cli.db import db_app
from hearth.cli.doctor import doctor
from hearth.cli.fabric import fabric_app
from hearth.cli.image import image_app
from hearth.cli.providers import providers_app
from hearth.cli.sandbox import sandbox_app
from hearth.cli.selftest import selftest
from hearth.cli.vault import vault_app
from hearth.errors import HearthError

app = typer.Typer(
    help="hearth: disposable browser desktops streamed over one authenticated WebSocket.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(fabric_app, name="fabric")
app.add_typer(node_app, name="node")
app.command()(edge)
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(vault_app, name="vault")
app.command()(doctor)
app.command()(selftest)
app.add_typer(image_app, name="image")
app.add_typer(providers_app, name="providers")


@app.command()
def serve(
    drain: bool = typer.Option(
        False,
        "--drain",
        help="on stop, end every session and CLI sandbox (default: they keep running for the next controller to adopt)",
    ),
) -> None:
    """Run the controller (API, gateway, fabric) until stopped. Sandboxes outlive it unless --drain."""
    from hearth.controller import build, make_app
    from hearth.serving.serve import check_listen, server

    settings = settings_or_exit()
    log.setup()
    if not settings.api_keys:
        Console(stderr=True).print("[red]error:[/] HEARTH_API_KEYS is empty; set at least one API key")
        raise typer.Exit(2)
    try:
        check_listen(settings)
    except HearthError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(exc.reason)}")
        raise typer.Exit(2) from None
    try:
        ctl = build(
            settings, drain=drain
        )  # refuses a store whose schema is behind/ahead, or keys missing over an old store
    except HearthError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(exc.reason)}")
        raise typer.Exit(2) from None
    server(settings, make_app(ctl)).run()


@app.command()
def demo(
    duration: float = typer.Option(
        None, help="keep the signed-in state (or --desktop: the session) this many seconds before cleaning up"
    ),
    user: str = typer.Option("demo-user", help="user id for the demo session"),
    provider: str = typer.Option("example", help="the provider to sign in to (a real one needs internet)"),
    auto: bool = typer.Option(
        None, "--auto/--no-auto", help="Chromium signs in on the viewer page (default: when stdin is not a terminal)"
    ),
    via: str = typer.Option(
        "internet",
        help="the example provider: 'internet' (the internet stand-in: DNS, HTTPS, CA, through the fabric's uplink) "
        "or 'fabric' (its IdP on the fabric's bridge address)",
    ),
    desktop: bool = typer.Option(False, "--desktop", help="one blank desktop instead of a sign-in"),
    nodes: int = typer.Option(
        0, "--nodes", help="N > 0: a cluster on this machine (N nodes + 2 edges in namespaces, PostgreSQL)", max=8
    ),
) -> None:
    """Sign someone in: the provider's page in the viewer, the desktop, the credentials arriving in the CLI sandbox;
    then everything the demo made is removed."""
    if not desktop and not nodes:
        from hearth.cli.demo_provider import VIAS
        from hearth.cli.demo_signin import interactive, run_signin_demo

        drive = not interactive() if auto is None else auto
        if via not in VIAS:
            Console(stderr=True).print(f"[red]error:[/] --via {escape(via)}: one of {', '.join(VIAS)}")
            raise typer.Exit(2)
        if drive and provider != "example":
            Console(stderr=True).print(
                f"[red]error:[/] a person signs in to {escape(provider)}: --auto runs the example provider only "
                "(run with --no-auto on a terminal and open the viewer URL)"
            )
            raise typer.Exit(2)
        log.setup("WARNING")
        sys.exit(asyncio.run(run_signin_demo(provider, drive, user, duration, via)))
    if nodes:
        from hearth.cli.demo_nodes import run_cluster_demo

        log.setup("WARNING")
        sys.exit(asyncio.run(run_cluster_demo(settings_or_exit(), nodes, duration)))
    from hearth.cli.demo import demo_key, run_demo

    settings = settings_or_exit()
    key = settings.api_keys[0] if settings.api_keys else demo_key()
    if not settings.api_keys:
        settings = settings.model_copy(update={"api_keys": (key,)})
    log.setup("WARNING")
    sys.exit(asyncio.run(run_demo(settings, key, duration, user)))


@app.command()
def drivers() -> None:
    """Which sandbox driver `auto` picks on this host, and why the others were skipped."""
    from hearth.sandbox.select import choose_driver

    settings = settings_or_exit()
    choice = choose_driver(settings)
    out = Console()
    out.print(f"[green]selected:[/] {choice.driver.name}")
    from hearth.sandbox.netns import NetnsDriver  # netns sandboxes (and every CLI sandbox) run this userspace

    out.print(f"[green]netns sandboxes run:[/] {escape(NetnsDriver(settings).root_choice())}")
    for name, why in choice.skipped.items():
        out.print(f"[yellow]skipped:[/] {name}: {escape(why)}")
