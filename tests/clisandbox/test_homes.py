"""hearth/clisandbox/homes.py: a pooled CLI sandbox's home — the pool's own entries cleared, the person's renamed in
(nothing copied: same inodes), back again after the stop, the pooled directory gone; settling twice is harmless."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hearth.clisandbox.homes import is_pooled_home, move_back, move_in, pooled_home
from hearth.config import Settings


def test_the_home_moves_in_and_back_by_rename(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    user = settings.data_dir / "users" / "ana-hash" / "home"
    (user / ".tool").mkdir(parents=True)
    (user / ".tool" / "creds.json").write_text("ana")
    (user / ".bashrc").write_text("# ana")
    os.symlink("/nowhere", user / "link")
    inode = (user / ".tool" / "creds.json").stat().st_ino
    live = pooled_home(settings, "pool-0123456789abcdef")
    assert live == settings.data_dir / "users" / "pool-0123456789abcdef" / "home"
    (live / ".cache").mkdir(parents=True)  # what the pooled sandbox's boot left there: belongs to no one
    (live / ".cache" / "x").write_text("pool")
    (live / ".bashrc").write_text("# pool")
    (live / ".hearth" / "ca").mkdir(parents=True)  # the pooled sandbox's agent's own (the CAs its CLIs trust)
    (live / ".hearth" / "ca" / "extra.pem").write_text("this sandbox's")
    (user / ".hearth").mkdir()
    (user / ".hearth" / "old").write_text("an earlier sandbox's")

    assert move_in(user, live) == 3
    assert sorted(os.listdir(live)) == [".bashrc", ".hearth", ".tool", "link"]  # the pool's .cache is gone
    assert os.listdir(live / ".hearth") == ["ca"]  # the sandbox's own kept; the earlier one dropped
    assert (live / ".bashrc").read_text() == "# ana"
    assert (live / ".tool" / "creds.json").stat().st_ino == inode  # renamed, not copied
    assert os.listdir(user) == []

    (live / ".tool" / "session.json").write_text("written while it ran")
    assert move_back(live, user) == 4
    assert sorted(os.listdir(user)) == [".bashrc", ".hearth", ".tool", "link"]
    assert (user / ".tool" / "session.json").read_text() == "written while it ran"
    assert os.readlink(user / "link") == "/nowhere"
    assert not live.parent.exists()  # the pooled directory is never used again
    assert move_back(live, user) == 0  # already settled: nothing happens
    assert sorted(os.listdir(user)) == [".bashrc", ".hearth", ".tool", "link"]
    assert is_pooled_home(settings, live) and not is_pooled_home(settings, user)


def test_a_first_hand_out_creates_the_persons_home(tmp_path: Path) -> None:
    user, live = tmp_path / "u" / "home", tmp_path / "pool-1" / "home"
    live.mkdir(parents=True)
    (live / "left").write_text("pool")
    assert move_in(user, live) == 0
    assert user.is_dir() and os.listdir(live) == []
    (live / "new").write_text("first prompt")
    assert move_back(live, user) == 1 and (user / "new").read_text() == "first prompt"
