"""Credential file watching on a real directory: new content only, JSON complete, stable for one poll, no symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from hearth_agent.credfiles import CredentialFiles
from hearth_agent.providerdef import FileDef


def test_files_count_once_rewritten_complete_and_stable(tmp_path: Path) -> None:
    (tmp_path / ".cli").mkdir()
    creds = tmp_path / ".cli" / "creds.json"
    creds.write_text('{"old": true}')  # a previous sign-in's file: not a new capture
    watch = CredentialFiles(str(tmp_path), [FileDef(".cli/creds.json", ".cli/creds.json", 0o600, True)])
    assert watch.check() is None and watch.problem == ".cli/creds.json: not rewritten"
    creds.write_text('{"new": ')
    assert watch.check() is None and watch.problem == ".cli/creds.json: not JSON yet"
    creds.write_text('{"new": true}')
    assert watch.check() is None  # first sight: wait one poll for the writer to finish
    found = watch.check()
    assert found is not None and found[0][1] == b'{"new": true}'


def test_a_symlinked_credential_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text('{"not": "yours"}')
    os.symlink(tmp_path / "secret", tmp_path / "creds.json")
    watch = CredentialFiles(str(tmp_path), [FileDef("creds.json", "creds.json", 0o600, True)])
    assert watch.check() is None
    assert watch.problem == "creds.json is a symlink"


def test_while_the_cli_runs_a_file_must_hold_still_long_enough_to_count(tmp_path: Path) -> None:
    """A CLI that writes its file twice (tokens, then what it learnt from the account's profile) is captured with the
    second write: until `min_stable` seconds passed unchanged (the clock is the caller's), nothing counts."""
    creds = tmp_path / "creds.json"
    creds.write_text("{}")
    watch = CredentialFiles(str(tmp_path), [FileDef("creds.json", "creds.json", 0o600, True)])
    creds.write_text('{"tokens": 1}')
    assert watch.check(10.0, 1.0) is None  # first sight
    assert watch.check(10.5, 1.0) is None and watch.problem == "still being written"
    creds.write_text('{"tokens": 1, "profile": 2}')  # the second write
    assert watch.check(10.9, 1.0) is None and watch.check(11.5, 1.0) is None
    found = watch.check(11.95, 1.0)
    assert found is not None and found[0][1] == b'{"tokens": 1, "profile": 2}'
