"""Shared CLI plumbing: load settings or exit with the fix."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hearth.config import Settings, load_settings
from hearth.errors import ConfigError, HearthError

console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        console.print("[bold red]configuration problems:[/]")
        for p in exc.problems:
            console.print(f"  • {escape(p)}")
        raise typer.Exit(2) from None


def hearth_error_exit(exc: HearthError) -> NoReturn:
    fail(exc.reason)
