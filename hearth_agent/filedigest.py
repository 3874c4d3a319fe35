"""What the delivered files in this sandbox's home are, without their contents: `POST /v1/files/digest`.

`{"targets": [home-relative paths]}` → `{"files": [{"target", "size", "mode", "sha256"}], "absent": [targets]}`.
Parents are walked without following symlinks and a symlink or non-file target is refused (hearth_agent/homefs.py),
as for installing and removing. Only a SHA-256 digest leaves the sandbox, never a byte of the file: the controller
(and `hearth demo`) show that a credential arrived, and that it is the one the vault sealed, without showing it.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from hearth_agent import homefs
from hearth_agent.sha import sha256

MAX_TARGETS = 32


def digest(home: str, targets: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(present files with size, mode and SHA-256; targets absent). Raises ValueError / homefs.PathRefused."""
    if not isinstance(targets, list) or not targets or len(targets) > MAX_TARGETS:
        raise ValueError(f"targets must be a list of 1 to {MAX_TARGETS} paths relative to the home directory")
    batch = [homefs.relative_parts(t) for t in targets]  # every path checked before any is read
    present: list[dict[str, Any]] = []
    absent: list[str] = []
    for parts in batch:
        target = "/".join(parts)
        data = homefs.read_file(home, target)
        if data is None:
            absent.append(target)
            continue
        present.append(
            {
                "target": target,
                "size": len(data),
                "mode": _mode(home, target),
                "sha256": sha256(data).hex(),
            }
        )
    return present, absent


def _mode(home: str, target: str) -> int:
    """The permission bits of HOME/`target` (read_file has refused symlinks on the way already)."""
    return stat.S_IMODE(os.stat(os.path.join(home, target), follow_symlinks=False).st_mode)


def route(home: str) -> Any:
    """The `POST /v1/files/digest` handler for an AgentServer whose files live under `home`."""

    def files_digest(body: dict[str, Any]) -> tuple[int, Any]:
        try:
            present, absent = digest(home, body.get("targets"))
        except ValueError as exc:  # homefs.PathRefused included
            return 400, {"error": str(exc)}
        except OSError as exc:
            return 500, {"error": f"could not read the files: {exc.strerror or type(exc).__name__}"}
        return 200, {"files": present, "absent": absent}

    return files_digest
