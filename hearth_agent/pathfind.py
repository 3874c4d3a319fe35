"""`which`: shutil.which on Linux, without shutil (it imports zlib, bz2, lzma and fnmatch: ≈0.27 MiB of every agent,
issue 25, for the two look-ups the agent makes: a provider's CLI, xprop)."""

from __future__ import annotations

import os


def which(cmd: str, path: str | None = None) -> str | None:
    """The first executable file named `cmd` on `path` (os.pathsep-separated; default $PATH, else os.defpath); a
    `cmd` with a slash is checked as it is. As shutil.which (mode os.F_OK | os.X_OK), directories never match."""

    def runnable(fn: str) -> bool:
        return os.path.exists(fn) and os.access(fn, os.F_OK | os.X_OK) and not os.path.isdir(fn)

    if os.path.dirname(cmd):
        return cmd if runnable(cmd) else None
    if path is None:
        path = os.environ.get("PATH", None)
        if path is None:
            try:
                path = os.confstr("CS_PATH")
            except (AttributeError, ValueError):
                path = os.defpath
    if not path:
        return None
    seen: set[str] = set()
    for d in path.split(os.pathsep):
        if d not in seen:
            seen.add(d)
            name = os.path.join(d, cmd)
            if runnable(name):
                return name
    return None
