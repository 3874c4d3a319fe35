"""hearth_agent/pathfind.which answers as shutil.which does (it replaces it in the agent: issue 25)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hearth_agent.pathfind import which


def test_which_as_shutil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "tool").chmod(0o755)
    (tmp_path / "bin" / "plain").write_text("")
    (tmp_path / "bin" / "dir").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tool").write_text("")
    (tmp_path / "other" / "tool").chmod(0o755)
    monkeypatch.chdir(tmp_path / "bin")
    paths = [None, "", f"{tmp_path}/bin", f"/nope::{tmp_path}/other:{tmp_path}/bin", f"{tmp_path}/bin:{tmp_path}/bin"]
    names = ["tool", "plain", "dir", "absent", f"{tmp_path}/bin/tool", f"{tmp_path}/bin/dir", "./tool", "sh"]
    for path in paths:
        for name in names:
            assert which(name, path) == shutil.which(name, path=path), (name, path)
    monkeypatch.setenv("PATH", f"{tmp_path}/other")
    assert which("tool") == shutil.which("tool") == os.path.join(tmp_path, "other", "tool")
