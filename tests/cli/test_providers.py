"""`hearth providers list|check` through the real command line (typer's runner, real namespaces for check)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from hearth.cli.main import app
from hearth.guest import clis


def test_list_shows_flows_and_modes() -> None:
    out = CliRunner().invoke(app, ["providers", "list"])
    assert out.exit_code == 0, out.output
    assert "@openai/codex" in out.output and "device_code" in out.output and "remote_browser" in out.output


def test_check_names_bad_input() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = CliRunner().invoke(app, ["providers", "check", "--provider", "copilot"])
    assert out.exit_code == 2 and "unknown provider 'copilot'" in out.output
    out = CliRunner().invoke(app, ["providers", "check", "--provider", "codex", "--flow", "magic"])
    assert out.exit_code == 2 and "unknown flow 'magic'" in out.output
    out = CliRunner().invoke(app, ["providers", "check", "--provider", "codex", "--flow", "paste_code", "--json"])
    assert out.exit_code == 1
    assert json.loads(out.stdout)["results"][0]["failed_step"] == "definition: no paste_code flow"


@pytest.mark.netns
@pytest.mark.slow
def test_check_runs_the_conformance_of_one_flow() -> None:
    if os.geteuid() != 0 or clis.installed() is None:
        pytest.skip("needs root and the pinned CLIs (bash scripts/setup.sh)")
    out = CliRunner().invoke(app, ["providers", "check", "--provider", "codex", "--flow", "loopback", "--json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)["results"]
    assert row["cli_version"] == "codex-cli 0.169.0"
    assert row["url_captured"] and row["credentials_written"] and row["failed_step"] == ""
    assert row["signed_in"] is True  # `codex login status`, with only the delivered files in a fresh home
