"""`hearth providers check --e2e` through the real command line (typer's runner): the internet stand-in, a throwaway
controller attached to it and Debian's Chromium as the person, for the example provider in both its modes; nothing
left behind. (Every provider and mode through the same path: tests/standins/test_e2e.py.)"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from hearth.cli.main import app
from hearth.standins.e2e import CHROMIUM


def test_check_e2e_names_an_unknown_provider() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = CliRunner().invoke(app, ["providers", "check", "--e2e", "--provider", "copilot"])
    assert out.exit_code == 2 and "unknown provider 'copilot'" in out.output


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.sqlite_pass
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
def test_check_e2e_signs_in_with_the_example_provider_in_both_modes() -> None:
    out = CliRunner().invoke(app, ["providers", "check", "--e2e", "--provider", "example", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout[out.stdout.index("{") :])
    rows = report["results"]
    assert [(r["provider"], r["mode"]) for r in rows] == [
        ("-", "bring-up"),
        ("example", "remote_browser"),
        ("example", "direct"),
    ]
    assert all(r["ok"] for r in rows), rows
    assert rows[1]["flow"] == "loopback" and rows[2]["flow"] == "device_code"
    assert rows[1]["seconds"]["page_drawn"] < rows[1]["seconds"]["completed"]
    assert rows[2]["states"][-1] == "completed"
    assert report["leftovers"] == []
