"""`POST /v1/browser`: start Chromium now — in a sandbox whose config says `browser_on_request` — and answer once its
window is on the desktop (waiting through restarts, at most BROWSER_TIMEOUT). The controller calls it when the browser's turn
comes in its boot queue, after every waiting desktop, and holds the turn until this answers: in a boot storm the
desktops come up first and the browsers (the heaviest part of a boot) start one after another instead of all at
once. A page to show (`/v1/open-url`, the sign-in URL) starts a waiting browser at once, on that page.

"Window on the desktop" is read from the window manager's client list (`xprop -root _NET_CLIENT_LIST`); where xprop
is not installed, a running process is all that is checked.
"""

from __future__ import annotations

import time
from typing import Any

from hearth_agent.server import HttpError
from hearth_agent.supervisor import Supervisor

BROWSER_TIMEOUT = 20.0


def browser_route(sup: Supervisor) -> Any:
    def start(_body: dict[str, Any]) -> tuple[int, Any]:
        if "chromium" not in sup.services:
            raise HttpError(409, "this sandbox has no browser (chromium is off)")
        t0 = time.monotonic()
        started = sup.want_browser()
        state, shown = sup.wait_browser(BROWSER_TIMEOUT)
        return 200, {"started": started, "state": state, "shown": shown, "seconds": round(time.monotonic() - t0, 3)}

    return start
