"""Chromium's managed policies on a hearth desktop — one definition, written (root-owned, read-only to the desktop
user) by the netns driver into the directory it binds at /etc/chromium, and by the VM's PID 1 into /etc/chromium.

The person at the desktop controls the browser, so the browser must not become a way into the sandbox's own files
or tools: no file:// URLs (the agent's and the CLI's files), no DevTools, no downloads.
"""

from __future__ import annotations

import json
import os

POLICY = {
    "URLBlocklist": ["file://*"],
    "DeveloperToolsAvailability": 2,  # DevTools disallowed
    "DownloadRestrictions": 3,  # block all downloads
}
MANAGED = "policies/managed"
NAME = "hearth.json"


def write_policy(etc_chromium: str) -> str:
    """Write POLICY under `etc_chromium`/policies/managed/ (directories 0755, file 0644); returns the file's path."""
    managed = os.path.join(etc_chromium, MANAGED)
    os.makedirs(managed, mode=0o755, exist_ok=True)
    path = os.path.join(managed, NAME)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(POLICY, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
