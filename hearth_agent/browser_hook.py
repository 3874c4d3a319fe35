#!/usr/bin/python3
"""BROWSER hook: CLIs call `$BROWSER <url>`; hand the URL to the agent (sign-in URL capture) and open it."""

import os
import sys
import time

if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else ""
    spool = os.path.join(os.environ.get("HOME", "/tmp"), ".hearth", "browser-urls")
    os.makedirs(os.path.dirname(spool), exist_ok=True)
    with open(spool, "a") as f:
        f.write(f"{time.time():.3f} {url}\n")
