"""Removing revoked credentials from a home: files go, symlinks go as links (their targets stay), directories and
escaping paths are refused before anything is deleted, missing files are reported as absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth_agent import homefs


def test_remove_files_and_report_absent(tmp_path: Path) -> None:
    (tmp_path / ".tool").mkdir()
    (tmp_path / ".tool" / "creds.json").write_text("{}")
    (tmp_path / ".tool" / "keep.json").write_text("{}")
    removed, absent = homefs.remove(str(tmp_path), [".tool/creds.json", ".other/creds.json", ".tool/none"])
    assert removed == [".tool/creds.json"]
    assert absent == [".other/creds.json", ".tool/none"]
    assert not (tmp_path / ".tool" / "creds.json").exists()
    assert (tmp_path / ".tool" / "keep.json").exists()


def test_a_symlink_is_removed_itself_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    home = tmp_path / "home"
    home.mkdir()
    (home / "creds.json").symlink_to(outside)
    assert homefs.remove(str(home), ["creds.json"]) == (["creds.json"], [])
    assert outside.read_text() == "not yours"
    (home / "linkdir").symlink_to(tmp_path)
    with pytest.raises(homefs.PathRefused, match="symlink"):
        homefs.remove(str(home), ["linkdir/outside.txt"])  # a symlinked parent is never walked through
    assert outside.exists()


@pytest.mark.parametrize("bad", [["/etc/passwd"], ["../x"], ["a/../../x"], [""], [], "x"])
def test_bad_targets_are_refused_before_anything_is_deleted(tmp_path: Path, bad: object) -> None:
    (tmp_path / "first.json").write_text("{}")
    with pytest.raises(ValueError):
        homefs.remove(str(tmp_path), ["first.json", *bad] if isinstance(bad, list) and bad else bad)
    assert (tmp_path / "first.json").exists()


def test_a_directory_is_not_a_credential(tmp_path: Path) -> None:
    (tmp_path / ".tool").mkdir()
    with pytest.raises(homefs.PathRefused, match="not a file"):
        homefs.remove(str(tmp_path), [".tool"])
    assert (tmp_path / ".tool").is_dir()
