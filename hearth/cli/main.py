"""`hearth` — the command line."""

from __future__ import annotations

import asyncio
import sys

import typer
from rich.console import Console
from rich.markup import escape

from hearth import log
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
    from hearth.api.app import build, create_app
    from hearth.cli.serve import check_listen, server

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
        ctl = build(settings)  # refuses a store whose schema is behind/ahead, or keys missing over an old store
    except HearthError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(exc.reason)}")
        raise typer.Exit(2) from None
    ctl.drain = drain
    server(settings, create_app(ctl)).run()


@app.command()
def demo(
    duration: float = typer.Option(None, help="stop after this many seconds instead of waiting for Ctrl-C"),
    user: str = typer.Option("demo-user", help="user id for the demo session"),
) -> None:
    """Set up what is missing, start the controller with one live session, print the viewer URL and timings."""
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
