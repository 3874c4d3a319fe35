"""Benchmarks and selftests run a scratch hearth (hearth.serving.local.scratch_settings): its sandboxes run this host's
guest image as `hearth serve` would (HEARTH_IMAGE_DIR, else <HEARTH_DATA_DIR>/image), not the scratch data dir's
missing one — and `userspace` says which userspace that is."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.serving.local import scratch_settings, userspace


def test_scratch_settings_take_this_hosts_image_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = tmp_path / "image"
    monkeypatch.setenv("HEARTH_IMAGE_DIR", str(image))
    with scratch_settings({}, "hearth-t") as settings:
        assert settings.images == image.resolve()
        assert settings.data_dir != tmp_path
        said = userspace(settings)
        assert said.startswith("netns sandboxes run the host's /usr") and str(image) in said
    with scratch_settings({"HEARTH_IMAGE_DIR": str(tmp_path / "other")}, "hearth-t") as settings:
        assert settings.images == tmp_path / "other"  # a bench's own choice wins


def test_without_the_variable_the_data_dirs_image_as_serve_reads_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HEARTH_IMAGE_DIR", raising=False)
    monkeypatch.setenv("HEARTH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no ./.env here
    with scratch_settings({}, "hearth-t") as settings:
        assert settings.images == (tmp_path / "data" / "image").resolve()
        assert settings.data_dir != tmp_path / "data"
