"""A pooled CLI sandbox's home: the person's home entries moved in at hand-out, and back when it stops.

A warm-pool CLI sandbox (HEARTH_POOL_SIZE=…,cli:N) is started before its user is known, with its home bound from a
directory of its own (`pooled_home`: `<data>/users/<pool owner>/home`, on the same filesystem as every user's home).
At hand-out its own entries (whatever its boot left there but its agent's AGENT_OWN) are deleted and the person's
are renamed into it — one
rename per entry, nothing copied; the sandbox sees them at once through its bind mount. When the sandbox stops
(idle stop, stop, delete, a dead one replaced) its processes are gone first, then every entry is renamed back into
the person's home and the pooled directory is removed: no pooled directory is ever used by a second person.

While it runs, CliSandboxRow.home names the pooled directory (where the person's home is now): a controller that
crashed mid-way finds it there and settles it on the next stop or start. "Already moved" is success.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hearth.config import Settings

POOL_PREFIX = "pool-"  # hearth/session/pool.py's POOL_OWNER
# What the sandbox's own agent wrote into its home at its start (the extra CAs the CLIs' NODE_EXTRA_CA_CERTS /
# SSL_CERT_FILE point at, the browser hook; hearth_agent/egress.py, signin.py): the pooled sandbox's stays, and a
# copy an earlier sandbox left in the person's home is dropped (its agent writes it afresh at every start).
AGENT_OWN = ".hearth"


def pooled_home(settings: Settings, pool_owner: str) -> Path:
    """The home directory a pooled CLI sandbox is started with (a pure function of its pool owner id)."""
    return settings.data_dir / "users" / pool_owner / "home"


def is_pooled_home(settings: Settings, home: Path) -> bool:
    """Whether `home` (a CliSandboxRow.home) is a pooled sandbox's directory rather than the person's own."""
    return home.parent.parent == settings.data_dir / "users" and home.parent.name.startswith(POOL_PREFIX)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def move_entries(src: Path, dst: Path) -> int:
    """Rename every entry of `src` into `dst` (an entry of the same name in `dst` is replaced); returns how many.
    Both must be on one filesystem (they are: both under HEARTH_DATA_DIR/users). A missing `src` moves nothing."""
    if not src.is_dir():
        return 0
    n = 0
    for entry in os.scandir(src):
        target = dst / entry.name
        if os.path.lexists(target):
            _remove(target)
        os.rename(entry.path, target)
        n += 1
    return n


def move_in(user_home: Path, live_home: Path) -> int:
    """Hand-out: clear the pooled home's entries (but its agent's own, AGENT_OWN), then move the person's in.
    Returns the entries moved."""
    user_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in os.scandir(live_home):
        if entry.name != AGENT_OWN:
            _remove(Path(entry.path))
    if (live_home / AGENT_OWN).exists():
        _remove(user_home / AGENT_OWN)
    return move_entries(user_home, live_home)


def move_back(live_home: Path, user_home: Path) -> int:
    """After the sandbox stopped: the entries go back to the person's home and the pooled directory goes. Returns
    the entries moved (0 when it was already done)."""
    user_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    n = move_entries(live_home, user_home)
    shutil.rmtree(live_home.parent, ignore_errors=True)
    return n
