"""The sign-in page as a person meets it, in Debian's Chromium driven by Playwright, on a desktop (1280×800) and a
touch phone (390×844) viewport, for the example provider in both modes, against a live controller:

- the stepper's words at each stage, the status line in an aria-live region, no raw state names on the page;
- direct mode: the "Open the … sign-in page" button, the link to copy, the QR code of that link, the device code
  large with a copy button, keyboard use; a pasted code on the phone;
- remote_browser mode: on the phone, the Keyboard button brings up the on-screen keyboard and an e-mail address typed
  there (and pasted) arrives in the e-mail field of the example provider's page in the sandbox;
- embedding: a parent page on an HEARTH_EMBED_ORIGINS origin receives the postMessage events; another origin cannot
  frame the page;
- return_url: the done page goes back after a few seconds; the cancelled page offers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from hearth.config import Settings
from hearth.errors import Hop
from hearth.gateway.qr import qr_svg
from hearth.serving.local import free_port
from hearth.session.states import Status
from hearth.signin import wording
from hearth_example.idp import IdpState
from tests.conftest import running_controller
from tests.gateway.test_viewer_browser import CHROMIUM, chromium
from tests.signinkit import approve_and_read_code, browse, idp_env, issuer, running_idp
from tests.waits import eventually

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh"),
]
IDP_PORT = 9407
ISSUER = issuer(IDP_PORT)
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 3,
}
CLIPBOARD = ["clipboard-read", "clipboard-write"]
STEP_WORDS = list(wording.STEP_LABELS.values())
# What must never show on the page outside Details: raw state names, internal tags, exit codes, file paths.
RAW = re.compile(r"awaiting_user|credentials_captured|\b(queued|starting|delivered)\b|\[[a-z_]+\]|exit(ed)? \d|\.json")

# Every status event the page handled, as the person saw it: the stepper's current step and the status line.
SAID = "window.hearthSaid || []"
VISIBLE_TEXT = "document.body.innerText"  # a closed <details> contributes nothing


@contextlib.contextmanager
def web_app(port: int) -> Iterator[str]:
    """The web application on loopback: /done (where return_url leads) and /parent?src=… (a page that frames the
    sign-in page and keeps every postMessage event from it in window.events)."""

    class App(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/parent":
                src = parse_qs(url.query)["src"][0]
                body = (
                    "<!doctype html><title>App</title><script>window.events = [];"
                    "addEventListener('message', (e) => window.events.push({origin: e.origin, data: e.data}));"
                    f"</script><iframe id=signin src='{src}' style='width:1000px;height:700px'></iframe>"
                )
            else:
                body = "<!doctype html><title>Back in the app</title><h1 id=app>Back in the app</h1>"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.asynccontextmanager
async def context(browser: Browser, clipboard: bool = True, **kind: Any) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(permissions=CLIPBOARD if clipboard else [], **kind)
    try:
        yield ctx
    finally:
        await ctx.close()


async def stepper(page: Page) -> tuple[list[str], str | None]:
    """The stepper's words and its current step's word."""
    words = await page.locator("#stepper li").all_inner_texts()
    current = page.locator("#stepper li[aria-current=step]")
    return words, (await current.inner_text() if await current.count() else None)


async def plain_page(page: Page) -> None:
    """The page shows no raw names; the status line is an aria-live region; Details holds the raw state."""
    text = await page.evaluate(VISIBLE_TEXT)
    assert not RAW.search(text), text
    assert await page.get_attribute("#message", "aria-live") == "polite"
    assert await page.get_attribute("#message", "role") == "status"


def qr_modules(url: str) -> str:
    """The dark modules of the QR code hearth makes for `url` (the SVG path the page must show)."""
    m = re.search(r'class="qrline"[^>]* d="([^"]+)"', qr_svg(url) or "")
    assert m is not None
    return m.group(1)


# The headline the page shows at each step of the stepper (the example provider's account is "Example").
HEADLINES = {
    "preparing": "Preparing your Example sign-in",
    "sign_in": "Sign in to Example",
    "saving": "Saving your Example sign-in",
    "done": "You are signed in to Example",
}


def assert_words_per_step(said: list[dict[str, Any]]) -> None:
    """Every status the page showed had the words of its step (a short step such as saving may pass unseen)."""
    for s in said:
        if s["step"]:
            assert s["headline"] == HEADLINES[s["step"]], s
            assert s["message"] and not RAW.search(s["message"]), s


def steps_in_order(said: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for s in said:
        if s["step"] and (not seen or seen[-1] != s["step"]):
            seen.append(s["step"])
    return seen


async def test_direct_mode_desktop_and_phone(make_settings: Callable[..., Settings]) -> None:
    """Desktop: device code — button, link, QR, code with copy, keyboard use, stepper, return after done. Phone: a
    pasted code (a wrong one first), the page fits the screen; a cancelled sign-in offers the way back."""
    app_port = free_port()
    app = f"http://127.0.0.1:{app_port}"
    settings = make_settings(HEARTH_EMBED_ORIGINS=app, **idp_env(IDP_PORT))
    netns = settings.fabric_netns
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with running_idp(settings, IDP_PORT, auto_approve=False), chromium() as browser:
            with web_app(app_port):
                start = {"user_id": "pat", "provider": "example", "mode": "direct", "return_url": f"{app}/done"}

                # --- desktop, device code -------------------------------------------------------------------
                async with context(browser, **DESKTOP) as ctx:
                    page = await ctx.new_page()
                    started = (await http.post("/api/auth/start", json=start)).json()
                    await page.goto(started["viewer_url"])
                    await page.wait_for_function(
                        "document.getElementById('code').textContent.length === 9", timeout=60_000
                    )
                    assert await stepper(page) == (STEP_WORDS, "Sign in")
                    assert await page.inner_text("#headline") == "Sign in to Example"
                    assert await page.inner_text("#message") == (
                        "Open the Example sign-in page and enter the code shown here."
                    )
                    button = page.locator("#open")
                    assert await button.inner_text() == "Open the Example sign-in page"
                    assert await button.get_attribute("href") == f"{ISSUER}/device"
                    assert await button.get_attribute("rel") == "noopener noreferrer"
                    assert await page.input_value("#link") == f"{ISSUER}/device"  # the link stays there to copy
                    modules = await page.get_attribute("#qr svg path.qrline", "d")
                    assert modules == qr_modules(f"{ISSUER}/device")  # the QR code is of exactly this link
                    box = await page.locator("#qr svg").bounding_box()
                    assert box is not None and box["width"] >= 150
                    code = await page.inner_text("#code")
                    assert float((await page.eval_on_selector("#code", "e => getComputedStyle(e).fontSize"))[:-2]) >= 32
                    await plain_page(page)
                    await page.click("#details summary")
                    assert "state: awaiting_user" in await page.inner_text("#stages")  # raw state: only in Details
                    await page.click("#details summary")

                    # Keyboard: Tab reaches the button and the copy buttons; Enter on "Copy code" copies the code.
                    await page.evaluate("document.activeElement.blur()")
                    reached: list[str] = []
                    for _ in range(12):
                        await page.keyboard.press("Tab")
                        reached.append(await page.evaluate("document.activeElement.id"))
                        if reached[-1] == "copy-code":
                            break
                    assert "open" in reached and reached[-1] == "copy-code", reached
                    await page.keyboard.press("Enter")
                    await page.wait_for_function("document.getElementById('copy-code').textContent === 'Copied'")
                    assert await page.evaluate("navigator.clipboard.readText()") == code
                    await page.click("#copy-link")
                    assert await page.evaluate("navigator.clipboard.readText()") == f"{ISSUER}/device"

                    await asyncio.to_thread(browse, netns, f"{ISSUER}/device/approve", {"user_code": code})
                    await page.wait_for_function("window.hearthStatus.status === 'completed'", timeout=60_000)
                    assert await page.inner_text("#headline") == "You are signed in to Example"
                    assert await page.inner_text("#message") == "Your Example sign-in is saved in your workspace."
                    assert await page.is_visible("#next-step")
                    assert await page.get_attribute("#return", "href") == f"{app}/done"
                    _words, current = await stepper(page)
                    assert current is None and await page.locator("#stepper li.done").count() == 4
                    said = await page.evaluate(SAID)
                    assert_words_per_step(said)
                    order = steps_in_order(said)
                    assert order[0] in ("preparing", "sign_in") and order[-1] == "done", order
                    assert order == [s for s in ["preparing", "sign_in", "saving", "done"] if s in order], order
                    await plain_page(page)
                    await page.wait_for_url(f"{app}/done", timeout=30_000)  # the done page goes back by itself
                    assert await page.inner_text("#app") == "Back in the app"

                # --- phone, paste code ---------------------------------------------------------------------
                example = ctl.ctl.providers["example"]
                flows = {k: v for k, v in example.flows.items() if k != "device_code"}
                ctl.ctl.providers["example"] = example.model_copy(update={"flows": flows})
                async with context(browser, **PHONE) as ctx:
                    page = await ctx.new_page()
                    started = (await http.post("/api/auth/start", json=start)).json()
                    await page.goto(started["viewer_url"])
                    await page.wait_for_selector("#paste-input", state="visible", timeout=60_000)
                    assert await stepper(page) == (STEP_WORDS, "Sign in")
                    assert await page.inner_text("#message") == (
                        "Open the Example sign-in page, sign in, then paste the code it shows you here."
                    )
                    url = await page.get_attribute("#open", "href")
                    assert url is not None and url.startswith(f"{ISSUER}/authorize?")
                    assert await page.is_visible("#open") and await page.is_visible("#qr svg")
                    assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # fits the phone
                    await page.tap("#paste-input")
                    await page.fill("#paste-input", "not-the-code")
                    await page.tap("#paste-submit")
                    await page.wait_for_selector("#cli-message", state="visible", timeout=60_000)
                    assert await page.is_visible("#paste-input")  # the person can retry
                    right = await asyncio.to_thread(approve_and_read_code, netns, url)
                    await page.fill("#paste-input", right)
                    await page.tap("#paste-submit")
                    await page.wait_for_function("window.hearthStatus.status === 'completed'", timeout=60_000)
                    assert await page.inner_text("#headline") == "You are signed in to Example"
                    await plain_page(page)
                    await page.wait_for_url(f"{app}/done", timeout=30_000)

                    # Cancelled: plain words (not "cancelled by the API client"), the way back offered, no redirect.
                    page = await ctx.new_page()
                    started = (await http.post("/api/auth/start", json=start)).json()
                    await page.goto(started["viewer_url"])
                    await page.wait_for_selector("#paste-input", state="visible", timeout=60_000)
                    await http.post(f"/api/auth/session/{started['session_id']}/cancel")
                    await page.wait_for_function("window.hearthStatus.status === 'cancelled'", timeout=30_000)
                    assert await page.inner_text("#headline") == "This sign-in was stopped"
                    assert "API client" not in await page.evaluate(VISIBLE_TEXT)
                    assert await page.is_visible("#return") and await page.inner_text("#return") == "Back to the app"
                    assert await page.inner_text("#return-count") == ""  # only the done page goes back by itself
                    assert (await stepper(page))[1] is None
                    assert await page.locator("#stepper li.stopped").all_inner_texts() == ["Sign in"]
                    await plain_page(page)

                    # Failed, with the kind of reason the issue quotes: plain words on the page, the reason in
                    # Details, the way back offered (no redirect).
                    page = await ctx.new_page()
                    started = (await http.post("/api/auth/start", json=start)).json()
                    await page.goto(started["viewer_url"])
                    await page.wait_for_selector("#paste-input", state="visible", timeout=60_000)
                    jargon = "[agent] sign-in failed: CLI exited with 1 (.example/auth.json: missing)"
                    await ctl.ctl.service.end(started["session_id"], Status.FAILED, jargon, Hop.AGENT)
                    await page.wait_for_function("window.hearthStatus.status === 'failed'", timeout=30_000)
                    assert await page.inner_text("#headline") == "Signing in to Example did not work"
                    assert await page.inner_text("#message") == "Signing in to Example did not work. Please try again."
                    assert await page.inner_text("#return") == "Back to the app"
                    assert await page.inner_text("#return-count") == ""
                    await plain_page(page)  # no "[agent]", exit code or path outside Details
                    await page.tap("#details summary")
                    assert jargon in await page.inner_text("#stages")


async def test_embedded_page_posts_its_status_to_the_parent(make_settings: Callable[..., Settings]) -> None:
    """A parent page on an allowed origin frames the sign-in page and receives `hearth.status` events through to the
    end (with the return_url); a parent on another origin cannot frame it (CSP frame-ancestors)."""
    app_port = free_port()
    app = f"http://127.0.0.1:{app_port}"
    settings = make_settings(HEARTH_EMBED_ORIGINS=app, **idp_env(IDP_PORT))
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with running_idp(settings, IDP_PORT, auto_approve=False), chromium() as browser:
            with web_app(app_port):
                start = {"user_id": "em", "provider": "example", "mode": "direct", "return_url": f"{app}/done"}
                started = (await http.post("/api/auth/start", json=start)).json()
                sid = started["session_id"]
                async with context(browser, **DESKTOP) as ctx:
                    page = await ctx.new_page()
                    src = started["viewer_url"]
                    await page.goto(f"{app}/parent?src={quote(src, safe='')}")
                    frame = page.frame_locator("#signin")
                    await frame.locator("#code").wait_for(timeout=60_000)
                    code = await frame.locator("#code").inner_text()
                    await asyncio.to_thread(
                        browse, settings.fabric_netns, f"{ISSUER}/device/approve", {"user_code": code}
                    )
                    await page.wait_for_function("window.events.some(e => e.data.final)", timeout=60_000)
                    events = await page.evaluate("window.events")
                    hearth_origin = str(httpx.URL(ctl.base_url)).rstrip("/")
                    assert {e["origin"] for e in events} == {hearth_origin}
                    data = [e["data"] for e in events]
                    for d in data:
                        assert d["source"] == "hearth" and d["type"] == "hearth.status" and d["session_id"] == sid
                        assert set(d) == {
                            "source", "type", "version", "session_id", "status", "step", "headline", "message", "final",
                            "return_url",
                        }  # fmt: skip
                        assert code not in str(d) and "/device" not in str(d)  # no link or code leaves the page
                    assert data[-1]["status"] == "completed" and data[-1]["final"] is True
                    assert data[-1]["return_url"] == f"{app}/done" and data[-1]["step"] == "done"
                    assert "sign_in" in [d["step"] for d in data]
                    assert [d for d in data if d["final"]] == [data[-1]]
                    assert await frame.locator("#return").get_attribute("target") == "_top"

                    # Another origin (localhost is not 127.0.0.1) may not frame the page.
                    other = await ctx.new_page()
                    await other.goto(f"http://localhost:{app_port}/parent?src={quote(src, safe='')}")
                    await other.wait_for_load_state("load")
                    child = other.frames[1] if len(other.frames) > 1 else None
                    assert child is None or await child.locator("#headline").count() == 0
                    assert await other.evaluate("window.events") == []


async def test_remote_browser_desktop_and_phone_typing(make_settings: Callable[..., Settings]) -> None:
    """A remote-browser sign-in seen on a desktop (stepper, words, the Keyboard and Paste buttons), then finished on
    a touch phone: the Keyboard button brings up the keyboard (a focused input) and what is typed there (a typo
    corrected with Backspace) — and pasted with the Paste button, through its field when the page may not read the
    clipboard, directly when it may — arrives in the e-mail field of the example provider's page inside the sandbox,
    Enter submits it, and the sign-in completes."""
    settings = make_settings(**idp_env(IDP_PORT))
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        async with running_idp(settings, IDP_PORT, auto_approve=False) as idp, chromium() as browser:
            start = {"user_id": "rb", "provider": "example", "mode": "remote_browser"}
            started = (await http.post("/api/auth/start", json=start)).json()
            async with context(browser, **DESKTOP) as ctx:
                page = await ctx.new_page()
                await page.goto(started["viewer_url"])
                await page.wait_for_function("window.hearthState === 'ready'", timeout=90_000)
                await page.wait_for_function("window.hearthStatus.step === 'sign_in'", timeout=60_000)
                assert await stepper(page) == (STEP_WORDS, "Sign in")
                assert await page.inner_text("#headline") == "Sign in to Example"
                assert await page.inner_text("#message") == "Sign in to Example in the window below."
                assert await page.is_visible("#kbd-button") and await page.is_visible("#paste-button")
                assert_words_per_step(await page.evaluate(SAID))
                said = steps_in_order(await page.evaluate(SAID))
                # (a desktop ready before the page's first status skips "preparing": the page starts at sign in)
                assert said[0] in ("preparing", "sign_in") and said[-1] == "sign_in", said
                assert said == [s for s in ["preparing", "sign_in"] if s in said], said
                await plain_page(page)
            await eventually(
                lambda: any(e["kind"] == "authorize_page" for e in idp.events), 60, "the provider's page", interval=0.1
            )

            async with context(browser, clipboard=False, **PHONE) as ctx:
                page = await ctx.new_page()
                await page.goto(started["viewer_url"])
                await page.wait_for_function("window.hearthState === 'ready'", timeout=60_000)
                assert await page.evaluate("document.documentElement.scrollWidth") <= 390
                await page.tap("#kbd-button")
                assert await page.evaluate("document.activeElement.id") == "kbd-input"
                assert await page.get_attribute("#kbd-button", "aria-pressed") == "true"
                await page.keyboard.type("persox")
                # A tap on the remote page: noVNC focuses its canvas; the keyboard stays up (the input gets it back).
                await page.focus("#screen canvas")
                await page.dispatch_event("#screen", "touchend")
                await page.wait_for_function("document.activeElement.id === 'kbd-input'", timeout=5_000)
                await page.keyboard.press("Backspace")  # a typo, corrected (on an empty input: sent as a key)
                await page.keyboard.type("n")
                # Paste without access to the clipboard: a field to paste into, sent with Send.
                await page.tap("#paste-button")
                await page.wait_for_selector("#paste-text", state="visible", timeout=10_000)
                await page.fill("#paste-text", ".one")
                await page.tap("#paste-text-send")
                assert not await page.is_visible("#paste-text-form")
                # Paste with access to the clipboard: its text is sent at once.
                await ctx.grant_permissions(CLIPBOARD)
                await page.evaluate("(t) => navigator.clipboard.writeText(t)", "@example.com")
                await page.tap("#paste-button")  # pasting takes the focus: the keyboard comes back with a tap
                await page.wait_for_function("window.hearthPasted >= 2", timeout=10_000)
                await page.tap("#kbd-button")
                await page.keyboard.press("Enter")
                await eventually(lambda: approved(idp) is not None, 60, "the approval", interval=0.1)
                assert approved(idp) == "person.one@example.com"
                await page.wait_for_function("window.hearthStatus.status === 'completed'", timeout=60_000)
                assert await page.inner_text("#headline") == "You are signed in to Example"
                assert await page.locator("#stepper li.done").count() == 4
                await plain_page(page)


def approved(idp: IdpState) -> str | None:
    with idp.lock:
        return next((str(e.get("email")) for e in idp.events if e["kind"] == "approved"), None)
