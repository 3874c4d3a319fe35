"""`hearth doctor [--session ID] [--json] [--api URL]`: name the first broken hop, with evidence and the fix.

Runs beside the controller (same settings, same state database, as root): every probe is made from inside the fabric
namespace. The end-to-end gateway check asks the controller's API for a viewer token (HEARTH_API_KEYS) and opens the
viewer WebSocket through it. Exit code 0 when every check passes, 1 otherwise (also for an unknown session).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from hearth.config import Settings, known_variables, load_settings, read_env_file
from hearth.doctor import Parts, Report, config_report, diagnose, render
from hearth.doctor.context import local_api_url
from hearth.doctor.records import StoreRecords
from hearth.errors import ConfigError, HearthError
from hearth.sandbox.netns import NetnsDriver
from hearth.session.view import SessionNotFound
from hearth.store.db import Database


def lenient_settings(env_file: Path | None = Path(".env")) -> tuple[Settings | None, list[str]]:
    """The settings, even when `load_settings` refuses them for names it does not read (the config check reports
    those itself); None when the values themselves are invalid."""
    try:
        return load_settings(env_file=env_file), []
    except ConfigError as exc:
        problems = exc.problems
    known = known_variables()
    merged = {**(read_env_file(env_file) if env_file is not None else {}), **os.environ}
    try:
        return Settings.model_validate({known[k]: v for k, v in merged.items() if k in known}), problems
    except ValidationError:
        return None, problems


def _has_store(settings: Settings) -> bool:
    """Whether the controller's state database exists (the doctor never creates one)."""
    url = settings.db_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        return bool(path) and path != ":memory:" and Path(path).exists()
    return True


def _store(settings: Settings) -> Database | None:
    """The controller's state database, only when it exists. Opening it asks it: a store that is down raises
    StoreError (the doctor names it)."""
    return Database(settings.db_url) if _has_store(settings) else None


async def _run(settings: Settings, session: str | None, api: str | None, gateway: bool) -> Report:
    db = _store(settings)
    try:
        records = StoreRecords(settings, db, NetnsDriver(settings)) if db is not None else None
        parts = Parts(
            settings=settings,
            records=records,
            specs=records,
            api_url=api or local_api_url(settings),
            api_key=settings.api_keys[0] if settings.api_keys else None,
            gateway=gateway,
        )
        return await diagnose(parts, session)
    finally:
        if db is not None:
            db.dispose()


def doctor(
    session: str = typer.Option(None, "--session", "-s", help="diagnose this session's whole path"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    api: str = typer.Option(
        None, "--api", help="the controller's URL for the end-to-end gateway check (default: HEARTH_API_LISTEN)"
    ),
    gateway: bool = typer.Option(True, "--gateway/--no-gateway", help="open the viewer WebSocket through the gateway"),
) -> None:
    """Walk the path (config, fabric, bridge, forwarding, NAT, firewall; with --session: link, ARP, ICMP, agent, VNC,
    RFB, gateway, driver) and name the first broken hop with its evidence and fix. Exit 1 when anything fails."""
    out, err = Console(), Console(stderr=True)
    settings, problems = lenient_settings()
    if settings is None:
        report = config_report(problems)
    elif session is not None and not _has_store(settings):
        err.print(f"[bold red]error:[/] no state database at {escape(settings.db_url)}: is this the controller's host?")
        raise typer.Exit(1)
    else:
        try:
            report = asyncio.run(_run(settings, session, api, gateway))
        except SessionNotFound:
            err.print(f"[bold red]error:[/] no session {escape(session or '')} in {escape(settings.db_url)}")
            raise typer.Exit(1) from None
        except HearthError as exc:  # the state store down or refusing: its hop and fix, never a traceback
            err.print(f"[bold red]error:[/] {escape(exc.reason)}")
            raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        render(report, out)
    raise typer.Exit(report.exit_code)


if __name__ == "__main__":
    typer.run(doctor)
