"""`hearth.controller.refuse_new_keys_over_old_store` and the store's data-dir watch (no root needed): real SQLite
stores in real directories."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.controller import refuse_new_keys_over_old_store
from hearth.errors import HearthError, StoreError
from hearth.store.db import Database
from hearth.store.models import CredentialRow, SessionRow


@contextlib.contextmanager
def opened(url: str, data_dir: Path | None = None) -> Iterator[Database]:
    """A store (watching `data_dir`, if given) for the length of a `with`."""
    db = Database(url, data_dir)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data dir (empty) for a store to watch."""
    path = tmp_path / "data"
    path.mkdir()
    return path


def add_session(db: Database) -> None:
    db.call(lambda s: s.add(SessionRow(id="s1", user_id="u", status="cancelled", driver="netns", fabric="f")))


def test_keys_are_generated_for_an_empty_store_only(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    with opened(s.db_url, s.data_dir) as db:
        refuse_new_keys_over_old_store(s, db)  # empty store: fine
        add_session(db)
        with pytest.raises(HearthError) as caught:
            refuse_new_keys_over_old_store(s, db)
        assert "token.key" in caught.value.reason and "1 sessions" in caught.value.reason
        (s.data_dir / "token.key").write_bytes(b"k" * 32)
        refuse_new_keys_over_old_store(s, db)  # the key is there: fine
        db.call(
            lambda d: d.add(
                CredentialRow(user_id="u", provider="p", key_id="k", nonce=b"n" * 12, ciphertext=b"c", files=[])
            )
        )
        with pytest.raises(HearthError, match=r"vault\.keys"):
            refuse_new_keys_over_old_store(s, db)
        refuse_new_keys_over_old_store(make_settings(HEARTH_MASTER_KEY="a" * 64), db)  # the key comes from env


def test_a_vanished_data_dir_stops_every_write(tmp_path: Path, data: Path) -> None:
    with opened(f"sqlite:///{tmp_path / 'elsewhere.db'}", data) as db:
        db.probe()
        shutil.rmtree(data)
        with pytest.raises(StoreError) as caught:
            db.probe()
        assert caught.value.reason.startswith("[store] the data directory") and "was removed" in caught.value.reason
        data.mkdir()  # a new, empty directory at the same path is not the store's directory
        with pytest.raises(StoreError, match="was removed"):
            add_session(db)


def test_a_replaced_data_dir_stops_every_write(tmp_path: Path, data: Path) -> None:
    with opened(f"sqlite:///{data / 'hearth.db'}", data) as db:
        add_session(db)
        data.rename(tmp_path / "moved-away")
        data.mkdir()  # e.g. a remount that hid the real directory
        with pytest.raises(StoreError, match="was replaced by another directory"):
            db.probe()


def test_an_unreachable_database_is_a_store_error_without_library_text(tmp_path: Path) -> None:
    with opened(f"sqlite:///{tmp_path / 'h.db'}") as db:
        (tmp_path / "h.db").unlink()
        (tmp_path / "h.db").mkdir()  # the file is now a directory: SQLite cannot open it
        db.engine.dispose()  # drop pooled connections so the next one opens the path again
        with pytest.raises(StoreError) as caught:
            db.probe()
        text = caught.value.reason
        assert text.startswith("[store] the state store is unavailable:"), text
        assert "sqlalche" not in text and "OperationalError" not in text and "sqlite3" not in text


def test_the_same_data_dir_moved_back_resumes_at_once(tmp_path: Path, data: Path) -> None:
    """The README's promise: the directory hearth opened, moved away and back, is service again without a restart
    (it is the one the store holds open; nothing was written while it was away)."""
    with opened(f"sqlite:///{data / 'hearth.db'}", data) as db:
        add_session(db)
        away = tmp_path / "moved-away"
        data.rename(away)
        with pytest.raises(StoreError) as caught:
            db.probe()
        assert "was moved away" in caught.value.reason, caught.value.reason
        assert "move the same directory back to its path (service resumes at once)" in caught.value.hint
        with pytest.raises(StoreError, match="was moved away"):
            db.call(lambda s: s.add(SessionRow(id="s2", user_id="u", status="cancelled", driver="netns", fabric="f")))
        away.rename(data)
        db.probe()
        db.call(lambda s: s.add(SessionRow(id="s3", user_id="u", status="cancelled", driver="netns", fabric="f")))
        assert db.call(lambda s: sorted(r.id for r in s.query(SessionRow))) == ["s1", "s3"]  # s2 never written


def test_a_restored_copy_of_the_data_dir_needs_a_restart(tmp_path: Path, data: Path) -> None:
    """A backup restored at the path is another directory: refused until a restart opens it afresh."""
    url = f"sqlite:///{data / 'hearth.db'}"
    with opened(url, data) as db:
        add_session(db)
        db.engine.dispose()  # the backup is taken of a quiet store
        shutil.copytree(data, tmp_path / "backup")
        data.rename(tmp_path / "lost")
        shutil.copytree(tmp_path / "backup", data)
        with pytest.raises(StoreError) as caught:
            db.probe()
        assert "was replaced by another directory" in caught.value.reason
        assert "for a restored backup or another directory, restart hearth" in caught.value.hint
    with opened(url, data) as restarted:  # what a restart does: the restored directory is the store's now
        restarted.probe()
        assert restarted.call(lambda s: [r.id for r in s.query(SessionRow)]) == ["s1"]
