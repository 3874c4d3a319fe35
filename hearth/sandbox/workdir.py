"""A sandbox's work directory on the host: whether the sandbox user can reach into it, and its removal (renamed away
first, so a next sandbox on the same slot never meets a deletion still under way)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any


def can_traverse(path: Path, uid: int, gid: int) -> bool:
    st = os.stat(path)
    bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
    return bool(st.st_mode & bit)


def untraversable(dirs: list[Path], uid: int, gid: int) -> Path | None:
    """The first of `dirs` the user cannot traverse, or None."""
    return next((d for d in dirs if not can_traverse(d, uid, gid)), None)


def rmtree(path: Path) -> None:
    """Remove a tree; already gone is success. A process of the sandbox that is still exiting may write one last
    file while the tree goes (ENOTEMPTY): try again briefly before calling it an error."""

    def onerror(_fn: Any, _path: str, exc: Any) -> None:
        if not isinstance(exc[1], FileNotFoundError):
            raise exc[1]

    for attempt in range(20):
        try:
            shutil.rmtree(path, onerror=onerror)
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or attempt == 19:
                raise
            time.sleep(0.05)


def remove_workdir(path: Path) -> None:
    """Remove a sandbox's directory: renamed away first (atomic), then deleted — so a next sandbox on the same slot
    never meets a deletion still under way (one a cancelled boot's undo left running in its thread). Leftovers of an
    earlier such deletion (`.<name>.gone-<hex>`) go too; already gone is success."""
    trash = path.with_name(f".{path.name}.gone-{secrets.token_hex(4)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        pass
    for old in path.parent.glob(f".{path.name}.gone-*"):
        rmtree(old)
