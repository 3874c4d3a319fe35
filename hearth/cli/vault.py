"""`hearth vault rotate`: re-seal every credential under a new master key."""

from __future__ import annotations

import typer
from rich.console import Console

from hearth.cli.common import fail, settings_or_exit
from hearth.errors import HearthError
from hearth.store.db import Database
from hearth.vault.keys import KeyRing, VaultKeyError, parse_key
from hearth.vault.store import Vault

vault_app = typer.Typer(help="The credential vault (AES-256-GCM).", no_args_is_help=True)


@vault_app.command()
def rotate(
    new_key: str = typer.Option("", "--new-key", help="hex/base64 of 32 bytes; required when HEARTH_MASTER_KEY is set"),
) -> None:
    """Re-seal every record under a fresh key (key file) or the given key; old keys are dropped afterwards."""
    s = settings_or_exit()
    try:
        ring = KeyRing.load(s.master_key, s.data_dir / "vault.keys")
        vault = Vault(Database(s.db_url), ring)
        new, count = vault.rotate_sync(parse_key(new_key) if new_key else None)
    except VaultKeyError as exc:
        fail(str(exc), 2)
    except HearthError as exc:  # the state store down or refusing: its hop and fix, never a traceback
        fail(exc.reason, 2)
    out = Console()
    out.print(f"[green]re-sealed {count} credential record(s)[/] under key id {new.current.key_id}")
    if s.master_key:
        out.print("now set HEARTH_MASTER_KEY to the new key and restart the controller")
