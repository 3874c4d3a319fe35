"""Commands that read the shared store, run while it is down: each names the store hop and its fix, exits non-zero,
and never prints a traceback (opening the store already asks it)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hearth.cli.main import app

COMMANDS = [["node", "list"], ["node", "drain", "n1"], ["node", "undrain", "n1"], ["doctor"], ["vault", "rotate"]]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_a_command_with_the_store_down_names_it_without_a_traceback(argv: list[str], tmp_path: Path) -> None:
    env = {
        "HEARTH_DATA_DIR": str(tmp_path),
        "HEARTH_DATABASE_URL": f"postgresql+psycopg://hearth@127.0.0.1:{closed_port()}/hearth",
        "HEARTH_FABRIC_NETNS": "hearth-store-down-test",  # never created: the doctor only looks
    }
    result = CliRunner().invoke(app, argv, env=env)
    out = result.output
    assert result.exit_code in (1, 2), (result.exit_code, out)
    assert "[store] the state store is unavailable" in " ".join(out.split()), out
    assert "HEARTH_DATABASE_URL" in " ".join(out.split()), out
    assert "Traceback" not in out and "StoreError" not in out and "╭" not in out, out
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
