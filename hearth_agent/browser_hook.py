#!/usr/bin/python3
"""BROWSER hook: CLIs call `$BROWSER <url>`; hand the URL to the agent, which opens it in the sandbox's Chromium.

Appends `<unix time> <url>\\n` to ~/.hearth/browser-urls (directory 0700, file 0600) in one O_APPEND write; the
agent's sign-in watcher reads the lines written after the login started. Stdlib only.
"""

import os
import sys
import time

SPOOL = os.path.join(".hearth", "browser-urls")


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else ""
    if not url.startswith(("http://", "https://")) or any(c.isspace() or ord(c) < 0x20 for c in url):
        print("browser_hook: expected one http(s) URL", file=sys.stderr)
        return 2
    spool = os.path.join(os.environ.get("HOME") or "/tmp", SPOOL)
    os.makedirs(os.path.dirname(spool), mode=0o700, exist_ok=True)
    fd = os.open(spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{time.time():.3f} {url}\n".encode())
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
