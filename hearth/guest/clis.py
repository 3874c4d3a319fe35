"""The provider CLIs (Node + claude, codex, gemini) pinned in the repo's clis/package-lock.json.

scripts/setup.sh installs them (npm ci) into `<HEARTH_CLIS_CACHE>/<lock hash>` (default /var/cache/hearth/clis),
world-readable; the netns driver binds that directory read-only at GUEST_CLIS inside every sandbox, and
`hearth image build` copies it into the image at the same path. The agent puts GUEST_CLIS/node_modules/.bin on the
CLI's PATH (hearth_agent/signin.py). Pure lookups here: nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

INSTALLED_LOCK = Path("share/hearth/clis")  # under sys.prefix: the pin of a hearth installed without its checkout


def _lock_dir() -> Path:
    """Where the pin (package.json + package-lock.json) is: the checkout's clis/, or `<sys.prefix>/share/hearth/clis`
    in an installed hearth (the node image's venv, hearth/image/node.py)."""
    checkout = Path(__file__).resolve().parents[2] / "clis"
    installed = Path(sys.prefix) / INSTALLED_LOCK
    return installed if not checkout.is_dir() and installed.is_dir() else checkout


REPO_CLIS = _lock_dir()
DEFAULT_CACHE = Path("/var/cache/hearth/clis")
GUEST_CLIS = "/opt/hearth-clis"  # inside a sandbox (bind) or the image (copy)
BINS = ("node", "claude", "codex", "gemini")


class ClisMissing(Exception):
    """The pinned CLIs are not installed on this host; the message names the fix."""


def lock_hash(src: Path = REPO_CLIS) -> str:
    """16 hex digits of SHA-256 over package.json + package-lock.json (what setup.sh names the cache dir by)."""
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update((src / name).read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("HEARTH_CLIS_CACHE") or DEFAULT_CACHE)


def installed(src: Path = REPO_CLIS) -> Path | None:
    """The installed directory for the current lock, or None when setup.sh has not installed it."""
    try:
        d = cache_root() / lock_hash(src)
    except OSError:
        return None
    return d if all((d / "node_modules" / ".bin" / b).exists() for b in BINS) else None


def require(src: Path = REPO_CLIS) -> Path:
    d = installed(src)
    if d is None:
        raise ClisMissing(
            f"the provider CLIs pinned in {src}/package-lock.json are not installed under {cache_root()}; "
            "run `bash scripts/setup.sh`"
        )
    return d


def versions(d: Path) -> dict[str, str]:
    """package name → installed version, for the packages clis/package.json lists."""
    out: dict[str, str] = {}
    try:
        wanted = json.loads((d / "package.json").read_text())["dependencies"]
    except (OSError, ValueError, KeyError):
        return out
    for name in sorted(wanted):
        try:
            out[name] = str(json.loads((d / "node_modules" / name / "package.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            out[name] = "missing"
    return out
