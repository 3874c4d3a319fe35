"""The viewer page in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium; no browser download)
against a live controller and sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from hearth.config import Settings
from hearth.sandbox.netns import pids_in_netns
from hearth.serving.local import free_port
from tests.conftest import running_controller
from tests.prefixproxy import prefix_proxy
from tests.signinkit import approve_and_read_code, browse, idp_env, issuer, running_idp

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = [pytest.mark.netns, pytest.mark.slow]
IDP_PORT = 9404
ISSUER = issuer(IDP_PORT)
CHROMIUM = "/usr/bin/chromium"
PAGE = "data:text/html,<body style='background:%23c0392b;color:white;font:90px sans-serif'>hearth viewer test</body>"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

VIEWER_READY = "window.hearthState && window.hearthState.startsWith('ready')"  # the page shows the remote desktop


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, launched headless by Playwright and closed afterwards."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


# Counts distinct colours on noVNC's canvas (a drawn desktop has many; a blank one has one).
CANVAS_COLOURS = """() => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4 * 97) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return seen.size;
}"""


SCREEN_BOX = (
    "() => { const r = document.getElementById('screen').getBoundingClientRect(); "
    "return [Math.floor(r.width), Math.floor(r.height)]; }"
)
CANVAS_SIZE = "() => { const c = document.querySelector('#screen canvas'); return c ? [c.width, c.height] : [0, 0]; }"


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
async def test_viewer_shows_status_desktop_and_plain_failure(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_START_URL=PAGE)
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            started = (await http.post("/api/auth/start", json={"user_id": "viewer"})).json()
            await page.goto(started["viewer_url"])  # at once: the sandbox is still starting
            await page.wait_for_function(VIEWER_READY, timeout=60_000)
            states = await page.evaluate("window.hearthStates")
            assert "starting" in states or "connecting" in states, states  # status shown while the sandbox started
            colours = 0
            for _ in range(150):  # Chromium inside the sandbox paints a few seconds after the desktop is up
                colours = await page.evaluate(CANVAS_COLOURS)
                if colours > 3:
                    break
                await asyncio.sleep(0.2)
            assert colours > 3, f"remote desktop canvas looks blank ({colours} colours)"
            png = await page.screenshot()
            assert len(png) > 10_000

            # The remote desktop follows the person's window (noVNC resizeSession → SetDesktopSize → Xvnc's RandR):
            # the framebuffer (noVNC's canvas) takes the size of the page's #screen, and again after a resize.
            async def desktop_follows() -> tuple[list[int], list[int]]:
                box, canvas = [0, 0], [-1, -1]
                for _ in range(100):
                    box = await page.evaluate(SCREEN_BOX)
                    canvas = await page.evaluate(CANVAS_SIZE)
                    if canvas == box:
                        break
                    await asyncio.sleep(0.1)
                return box, canvas

            box, canvas = await desktop_follows()
            assert canvas == box and box != [1280, 800], (box, canvas)  # not the configured HEARTH_SCREEN
            await page.set_viewport_size({"width": 900, "height": 640})
            smaller, canvas = await desktop_follows()
            assert canvas == smaller and smaller[0] < box[0] and smaller[1] < box[1], (box, smaller, canvas)

            # Kill the sandbox: the watchdog fails the session, the page says so in plain words.
            body = (await http.get(f"/api/auth/session/{started['session_id']}")).json()
            netns = f"{settings.fabric_netns}-s{int(body['sandbox_ip'].rsplit('.', 1)[1]) - 2}"
            for pid in await asyncio.to_thread(pids_in_netns, netns):
                with contextlib.suppress(ProcessLookupError):  # the pid namespace takes the rest down with it
                    os.kill(pid, signal.SIGKILL)
            await page.wait_for_function("window.hearthStatus.status === 'failed'", timeout=30_000)
            assert await page.inner_text("#message") == "The browser could not be started or stopped working."
            assert "[driver]" not in await page.evaluate("document.body.innerText")  # plain words on the page
            await page.click("#details summary")
            assert "[driver]" in await page.inner_text("#stages")  # the reason names the hop, under Details
            assert (await http.get(f"/api/auth/session/{started['session_id']}")).json()["status"] == "failed"


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
async def test_viewer_works_behind_a_reverse_proxy_under_a_path_prefix(make_settings: Callable[..., Settings]) -> None:
    """The README's nginx setup, with a Python stand-in: everything under /hearth/, HEARTH_PUBLIC_URL set. The API
    returns prefixed viewer URLs, and the page, noVNC, the status stream and the WebSocket all work through it."""
    port = free_port()
    public = f"http://127.0.0.1:{port}/hearth"
    settings = make_settings(HEARTH_START_URL=PAGE, HEARTH_PUBLIC_URL=public)
    async with (
        running_controller(settings) as ctl,
        prefix_proxy(ctl.base_url, "/hearth", port) as base,
        httpx.AsyncClient(base_url=base, headers=ctl.headers, timeout=30) as http,
    ):
        started = (await http.post("/api/auth/start", json={"user_id": "proxied"})).json()
        assert started["viewer_url"].startswith(f"{public}/api/auth/session/{started['session_id']}/novnc?token=")
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1024, "height": 700})
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            await page.goto(started["viewer_url"])
            await page.wait_for_function(VIEWER_READY, timeout=60_000)
            colours = 0
            for _ in range(150):
                colours = await page.evaluate(CANVAS_COLOURS)
                if colours > 3:
                    break
                await asyncio.sleep(0.2)
            assert colours > 3, f"remote desktop canvas looks blank ({colours} colours)"
            assert failed == [], failed  # every asset, the status stream and the WebSocket went through the prefix
            urls = await page.evaluate(
                "performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
                ".map(e => e.name)"
            )
            assert len(urls) > 5 and [u for u in urls if not u.startswith(public)] == []


async def test_viewer_refuses_a_bad_token_in_plain_words(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false")
    async with running_controller(settings) as ctl, httpx.AsyncClient(base_url=ctl.base_url, timeout=30) as http:
        r = await http.get("/api/auth/session/whatever/novnc?token=forged")
        assert r.status_code == 401
        assert "This link is not valid" in r.text


# The sandbox's start page: a textarea on a red page that turns green once it holds the pasted text (blue if the
# view-only viewer's text ever arrives) — observed through the viewer's canvas.
PASTE_PAGE = (
    "data:text/html,<body style='margin:0;background:%23c0392b'><textarea autofocus "
    "style='position:fixed;top:60px;left:60px;width:600px;height:300px' oninput=\"document.body.style.background="
    "this.value.includes('VIEWONLY')?'%230000ff':this.value.includes('pasted-from-person')?'%2300ff00':'%23c0392b'"
    '"></textarea></body>'
)


# The share of the remote desktop's top rows in one colour (a tab strip or an infobar would be grey).
TOP_ROWS = """(rgb) => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width) return -1;
  const d = c.getContext('2d').getImageData(0, 0, c.width, 30).data;
  let hit = 0, all = 0;
  const near = (a, b) => Math.abs(a - b) < 40;
  for (let i = 0; i < d.length; i += 4 * 13) {
    all++;
    if (near(d[i], rgb[0]) && near(d[i + 1], rgb[1]) && near(d[i + 2], rgb[2])) hit++;
  }
  return hit / all;
}"""
RED, GREEN, BLUE = (0xC0, 0x39, 0x2B), (0, 0xFF, 0), (0, 0, 0xFF)


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
async def test_remote_browser_fills_the_desktop_and_takes_the_persons_clipboard(
    make_settings: Callable[..., Settings],
) -> None:
    """Chromium runs as one kiosk window (the page's colour reaches the top edge: no tab strip, no flag bar), and
    Ctrl+V in the viewer pastes the person's clipboard into the remote page. A view-only viewer's paste is dropped by
    the gateway (its page is told nothing about view-only here, so noVNC does send it)."""
    settings = make_settings(HEARTH_START_URL=PASTE_PAGE)
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with chromium() as browser:
            started = (await http.post("/api/auth/start", json={"user_id": "paste"})).json()
            sid = started["session_id"]
            context = await browser.new_context(
                viewport={"width": 1280, "height": 860}, permissions=["clipboard-read", "clipboard-write"]
            )
            page = await context.new_page()

            async def open_viewer(url: str) -> None:
                await page.goto(url)
                await page.wait_for_function(VIEWER_READY, timeout=60_000)

            async def paste(text: str) -> None:
                await page.evaluate("(t) => navigator.clipboard.writeText(t)", text)
                await page.mouse.click(300, 250)  # into the remote textarea
                await page.keyboard.press("Control+V")
                await page.wait_for_function("window.hearthPasted >= 1", timeout=10_000)  # per page load

            view = (await http.post(f"/api/auth/session/{sid}/token", json={"scope": "view"})).json()
            await open_viewer(view["viewer_url"])
            await paste("VIEWONLY-SECRET")

            async def top_rows(rgb: tuple[int, int, int]) -> float:
                share = 0.0
                for _ in range(150):  # Chromium paints a few seconds after the desktop is up
                    share = float(await page.evaluate(TOP_ROWS, list(rgb)))
                    if share > 0.95:
                        break
                    await asyncio.sleep(0.2)
                return share

            await open_viewer(started["viewer_url"])
            reds = await top_rows(RED)
            assert reds > 0.95, f"the remote page does not reach the top of the desktop ({reds:.0%} red)"

            await paste("pasted-from-person")
            greens = await top_rows(GREEN)
            assert greens > 0.95, f"the pasted text did not arrive in the remote page ({greens:.0%} green)"
            assert await page.evaluate(TOP_ROWS, list(BLUE)) == 0  # the view-only viewer's paste never arrived


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
async def test_direct_mode_page_shows_link_code_and_takes_a_pasted_code(make_settings: Callable[..., Settings]) -> None:
    """The page of a direct-mode sign-in, in a real browser: the link and the device code in plain words; for a
    paste-code sign-in a field whose value the agent types into the CLI — a wrong code shows the CLI's own error,
    the right one finishes with "You are signed in to …". (The provider's pages are visited by the test from inside
    the fabric namespace, where the example IdP listens.) More of the page: tests/gateway/test_viewer_signin.py."""
    settings = make_settings(**idp_env(IDP_PORT))
    netns = settings.fabric_netns
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with running_idp(settings, IDP_PORT, auto_approve=False), chromium() as browser:
            page = await browser.new_page(viewport={"width": 1000, "height": 700})
            name = "Example"  # the account's name (hearth/signin/wording.py)
            start = {"user_id": "pat", "provider": "example", "mode": "direct"}
            started = (await http.post("/api/auth/start", json=start)).json()
            await page.goto(started["viewer_url"])
            await page.wait_for_function("document.getElementById('code').textContent.length === 9", timeout=60_000)
            assert await page.inner_text("#headline") == f"Sign in to {name}"
            assert await page.inner_text("#open-step") == f"Open the {name} sign-in page"
            code = await page.inner_text("#code")
            assert await page.get_attribute("#open", "href") == f"{ISSUER}/device"
            assert not await page.is_visible("#paste")
            assert not await page.is_visible("#details #stages")  # timings only behind the toggle
            view = (await http.post(f"/api/auth/session/{started['session_id']}/token", json={"scope": "view"})).json()
            watcher = await browser.new_page()
            await watcher.goto(view["viewer_url"])  # a view-only link shows neither the link nor the code
            await watcher.wait_for_function("window.hearthStatus && window.hearthStatus.watching", timeout=30_000)
            assert await watcher.inner_text("#headline") == f"{name} sign-in in progress"
            assert code not in await watcher.content() and "/device" not in await watcher.content()
            await watcher.close()
            await asyncio.to_thread(browse, netns, f"{ISSUER}/device/approve", {"user_code": code})
            done = f"You are signed in to {name}"
            await page.wait_for_function(f"window.hearthHeadline === {done!r}", timeout=60_000)

            example = ctl.ctl.providers["example"]
            flows = {k: v for k, v in example.flows.items() if k != "device_code"}
            ctl.ctl.providers["example"] = example.model_copy(update={"flows": flows})
            started = (await http.post("/api/auth/start", json=start)).json()
            await page.goto(started["viewer_url"])
            await page.wait_for_selector("#paste-input", state="visible", timeout=60_000)
            url = await page.get_attribute("#open", "href")
            assert url is not None and url.startswith(f"{ISSUER}/authorize?")
            await page.fill("#paste-input", "not-the-code")
            await page.click("#paste-submit")
            await page.wait_for_selector("#cli-message", state="visible", timeout=60_000)
            assert await page.inner_text("#cli-message")  # why the code was refused, in plain words
            assert await page.is_visible("#paste-input")  # the person can retry
            right = await asyncio.to_thread(approve_and_read_code, netns, url)
            await page.fill("#paste-input", right)
            await page.click("#paste-submit")
            await page.wait_for_function(f"window.hearthHeadline === {done!r}", timeout=60_000)
            assert await page.inner_text("#message") == f"Your {name} sign-in is saved in your workspace."
