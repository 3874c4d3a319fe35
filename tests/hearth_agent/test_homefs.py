"""Removing revoked credentials from a home: files go, symlinks go as links (their targets stay), directories and
escaping paths are refused before anything is deleted, missing files are reported as absent. Merging the settings
a CLI needs into the person's own settings file: other settings kept, never through a symlink."""

from __future__ import annotations

import json
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


def _merge(target: str, merge: object, mode: int = 0o600) -> list[homefs.NewFile]:
    return homefs.parse_files([{"target": target, "mode": mode, "merge_json": merge}])


def test_settings_are_merged_into_the_persons_own_keeping_every_other_setting(tmp_path: Path) -> None:
    """Gemini CLI's auth type goes into an existing settings.json without clobbering the person's settings."""
    (tmp_path / ".gemini").mkdir()
    own = {"ui": {"theme": "GitHub"}, "security": {"folderTrust": {"enabled": True}, "auth": {"useExternal": False}}}
    (tmp_path / ".gemini" / "settings.json").write_text(json.dumps(own))
    (tmp_path / ".gemini" / "settings.json").chmod(0o644)
    files = _merge(".gemini/settings.json", {"security": {"auth": {"selectedType": "oauth-personal"}}})
    assert homefs.install(str(tmp_path), files) == [".gemini/settings.json"]
    got = json.loads((tmp_path / ".gemini" / "settings.json").read_text())
    assert got == {
        "ui": {"theme": "GitHub"},
        "security": {
            "folderTrust": {"enabled": True},
            "auth": {"useExternal": False, "selectedType": "oauth-personal"},
        },
    }
    assert (tmp_path / ".gemini" / "settings.json").stat().st_mode & 0o777 == 0o644  # the person's file keeps its mode


def test_settings_are_created_with_the_mode_when_absent(tmp_path: Path) -> None:
    homefs.install(str(tmp_path), _merge(".gemini/settings.json", {"a": {"b": 1}}))
    path = tmp_path / ".gemini" / "settings.json"
    assert json.loads(path.read_text()) == {"a": {"b": 1}}
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_settings_file_that_is_not_a_json_object_is_left_alone_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    creds = {"target": "creds.json", "mode": 0o600, "data_b64": "e30="}
    for text in ("// a comment\n{", "[1, 2]"):
        path.write_text(text)
        batch = homefs.parse_files([creds, {"target": "settings.json", "merge_json": {"a": 1}}])
        with pytest.raises(ValueError, match=r"not a JSON object.*fix or remove that file"):
            homefs.install(str(tmp_path), batch)
        assert path.read_text() == text
        assert not (tmp_path / "creds.json").exists()  # checked before anything is written: no half delivery


def test_a_symlinked_settings_file_is_refused_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").symlink_to(outside)
    with pytest.raises(homefs.PathRefused, match="symlink"):
        homefs.install(str(home), _merge("settings.json", {"a": 1}))
    assert outside.read_text() == "{}"


@pytest.mark.parametrize("merge", [{}, [], "x", None])
def test_a_merge_must_be_a_non_empty_object(merge: object) -> None:
    with pytest.raises(ValueError, match="merge_json"):
        _merge("settings.json", merge)
