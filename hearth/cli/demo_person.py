"""The person of `hearth demo --auto`: Debian's Chromium, driven by Playwright, on the viewer page.

It opens the viewer URL, waits until the provider's sign-in page is drawn on the remote desktop (noVNC's canvas),
and signs in the way a person does: a pointer click on the canvas, which noVNC sends to the sandbox as RFB pointer
events — nothing reaches the sandbox by any other way. Where to click is read from the pixels
the person sees: the internet stand-in's providers draw one "Authorize" button over the whole page
(hearth/standins/inetweb.py), the example IdP on the fabric a grey "Approve" button under an e-mail field
(hearth_example/idp.py; the field is optional and left empty: keys typed on a loaded desktop may be drawn after the
click that submits the form).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"  # Debian's (scripts/setup.sh installs it; Playwright downloads no browser)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# What the person sees on noVNC's canvas, read in the viewer page: the share of a page's background colour, and the
# centre (page coordinates) of the region of a colour. Colours within 12 per channel (lossy encodings).
SCAN = """([colours]) => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width || !c.height) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const r = c.getBoundingClientRect();
  const sx = r.width / c.width, sy = r.height / c.height;
  const out = {};
  for (const [name, rgb] of Object.entries(colours)) {
    let n = 0, all = 0, x = 0, y = 0;
    for (let i = 0, p = 0; i < d.length; i += 4 * 7, p += 7) {
      all++;
      if (Math.abs(d[i] - rgb[0]) <= 12 && Math.abs(d[i + 1] - rgb[1]) <= 12 && Math.abs(d[i + 2] - rgb[2]) <= 12) {
        n++; x += p % c.width; y += Math.floor(p / c.width);
      }
    }
    out[name] = n ? {share: n / all, x: r.left + (x / n) * sx, y: r.top + (y / n) * sy} : {share: 0, x: 0, y: 0};
  }
  return out;
}"""
COLOURS = {
    "standin": (0x1A, 0x7F, 0x37),  # the stand-in's full-page Authorize button
    "example": (0xFF, 0xF7, 0xE0),  # the example IdP's consent page background
    "field": (0xFF, 0xFF, 0xFF),  # its e-mail field
    "button": (0xEF, 0xEF, 0xEF),  # its Approve button (Chromium's ButtonFace)
}
PAGE_SHARE = 0.4  # the provider page covers at least this much of the desktop once drawn


@dataclass(frozen=True)
class Region:
    share: float
    x: float
    y: float


class PersonFailed(RuntimeError):
    """The person could not do a step (the page did not show what a person would see)."""


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, launched by Playwright (`pip install hearth[dev]` brings Playwright)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        raise PersonFailed("Playwright is not installed: run `bash scripts/setup.sh` (hearth[dev])") from exc
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def scan(page: Page) -> dict[str, Region] | None:
    raw: dict[str, dict[str, float]] | None = await page.evaluate(SCAN, [{k: list(v) for k, v in COLOURS.items()}])
    return None if raw is None else {k: Region(v["share"], v["x"], v["y"]) for k, v in raw.items()}


async def open_viewer(browser: Browser, url: str, timeout: float) -> Page:
    """A new page on the viewer URL, once it shows the remote desktop."""
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(url)
    await page.wait_for_function("window.hearthState && window.hearthState.startsWith('ready')", timeout=timeout * 1000)
    return page


def _ready(kind: str, seen: dict[str, Region]) -> bool:
    """The provider's page covers the desktop with what a person clicks drawn (the example's field and button)."""
    if seen[kind].share < PAGE_SHARE:
        return False
    return kind == "standin" or (seen["field"].share > 0.001 and seen["button"].share > 0.001)


async def provider_page_drawn(page: Page, timeout: float) -> tuple[str, dict[str, Region]]:
    """Wait until the provider's page is drawn on the desktop, the same in two looks in a row (a person does not
    click on a page still being painted); returns which kind ('standin' | 'example') and the last look."""
    deadline = time.monotonic() + timeout
    last: dict[str, Region] | None = None
    while time.monotonic() < deadline:
        seen = await scan(page)
        if seen is not None:
            for kind in ("standin", "example"):
                if _ready(kind, seen) and seen == last:
                    return kind, seen
        last = seen
        await asyncio.sleep(0.1)
    shares = ", ".join(f"{k} {v.share:.1%}" for k, v in (last or {}).items()) or "nothing drawn"
    raise PersonFailed(f"the provider's sign-in page was not drawn in the viewer within {timeout:.0f}s ({shares})")


async def sign_in(page: Page, timeout: float, tries: int = 3) -> str:
    """Click through the provider's page as a person does; returns what was done, in words. A click the page did not
    take (the page still there a while later) is made again, as a person would."""
    said = ""
    for _ in range(tries):
        kind, seen = await provider_page_drawn(page, timeout)
        if not said:
            size = await page.evaluate(
                "(() => { const c = document.querySelector('#screen canvas'); "
                "return c ? c.width + 'x' + c.height : '?'; })()"
            )
            said = f"saw the provider's page drawn on the {size} desktop in the viewer, "
        if kind == "standin":
            await page.mouse.click(seen["standin"].x, seen["standin"].y)
            did = "clicked Authorize on it"
        else:
            await page.mouse.click(seen["button"].x, seen["button"].y)
            did = "clicked Approve on it"
        if await _left(page, kind, 15):
            return said + did
    raise PersonFailed(f"the provider's page stayed after {tries} clicks")


async def _left(page: Page, kind: str, timeout: float) -> bool:
    """The provider's page went away (or the session moved on) within `timeout` seconds of the click."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await page.evaluate("window.hearthStatus && window.hearthStatus.status")
        if status not in (None, "awaiting_user", "ready"):
            return True
        seen = await scan(page)
        if seen is not None and seen[kind].share < PAGE_SHARE:
            return True
        await asyncio.sleep(0.2)
    return False


async def wait_status(page: Page, statuses: tuple[str, ...], timeout: float) -> str:
    """The session status the viewer page shows, once it is one of `statuses`."""
    names = ",".join(f"'{s}'" for s in statuses)
    await page.wait_for_function(
        f"window.hearthStatus && [{names}].includes(window.hearthStatus.status)", timeout=timeout * 1000
    )
    status: Any = await page.evaluate("window.hearthStatus.status")
    return str(status)


async def seen(page: Page) -> str:
    """What the viewer page shows, in a few words (for a failure's reason): its state, the session's status, the
    share of the desktop each known colour covers."""
    state = await page.evaluate("[window.hearthState, window.hearthStatus && window.hearthStatus.status]")
    shares = await scan(page)
    colours = ", ".join(f"{k} {v.share:.0%}" for k, v in (shares or {}).items())
    return f"state {state[0]}, status {state[1]}, canvas: {colours or 'none'}"
