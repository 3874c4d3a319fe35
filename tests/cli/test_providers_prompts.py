"""`hearth providers check --prompts` through the real command line (typer's runner; real namespaces, the real
Claude Code CLI against the model-API stand-in through the agent's prompt runner)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from hearth.cli.main import app
from hearth.guest import clis
from hearth.standins import promptcheck


def test_check_prompts_names_an_unknown_provider() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = CliRunner().invoke(app, ["providers", "check", "--prompts", "--provider", "copilot"])
    assert out.exit_code == 2 and "unknown provider 'copilot'" in out.output


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.sqlite_pass
def test_check_prompts_runs_every_scenario_of_one_cli() -> None:
    if os.geteuid() != 0 or clis.installed() is None:
        pytest.skip("needs root and the pinned CLIs (bash scripts/setup.sh)")
    out = CliRunner().invoke(app, ["providers", "check", "--prompts", "--provider", "claude_code", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)["results"]
    assert [r["scenario"] for r in rows] == list(promptcheck.SCENARIOS)
    assert all(r["failed_step"] == "" and r["cli_version"].startswith("2.1.328") for r in rows), rows
    by = {r["scenario"]: r for r in rows}
    assert by["answer"]["status"] == "completed" and by["answer"]["seconds_to_first_text"] is not None
    assert by["revoked"]["status"] == "failed" and by["revoked"]["needs_signin"]
    assert by["cancel"]["status"] == "cancelled"


def test_example_provider_is_not_a_real_cli_check() -> None:
    """Only providers with a real CLI are checked; none picked is a failure, not an empty pass."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = CliRunner().invoke(app, ["providers", "check", "--prompts", "--provider", "example", "--json"])
    assert out.exit_code == 1 and json.loads(out.stdout)["results"] == []
