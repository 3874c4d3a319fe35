"""A refused code, as a person meets it (issue 21, item 3), through a real controller, sandbox, agent and the example
CLI against the example IdP, in direct mode: the CLI refuses a wrong code and starts a new authorization request —
as Claude Code and Gemini CLI do — so the link changes. The API then says, in the person's words, "That code was
not accepted. A new sign-in link is ready — open it and sign in again", shows the new link with `renewed`, keeps the
CLI's own words in `detail` and the events (never in `message`), and the person signs in with the new link."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.providers.model import FlowName
from tests.conftest import loopback_idp_env, running_controller
from tests.gateway.test_viewer_browser import CHROMIUM, chromium
from tests.live import signin_of
from tests.signinkit import approve_and_read_code, idp_env, issuer, running_idp
from tests.waits import wait_session

pytestmark = [pytest.mark.slow]
IDP_PORT = 9416
ISSUER = issuer(IDP_PORT)
REFUSED = "That code was not accepted. A new sign-in link is ready — open it and sign in again."


async def test_a_refused_code_renews_the_link_in_the_persons_words(make_settings: Callable[..., Settings]) -> None:
    """On the loopback driver: no root."""
    settings = make_settings(**loopback_idp_env(IDP_PORT))
    netns, at = settings.dial_netns, issuer(IDP_PORT, str(settings.bridge_ip))
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
        running_idp(settings, IDP_PORT, auto_approve=False),
    ):
        example = ctl.ctl.providers["example"]
        paste = example.flows[FlowName.PASTE_CODE]
        renewing = paste.model_copy(update={"env": {**paste.env, "HEARTH_EXAMPLE_RENEW": "1"}})
        ctl.ctl.providers["example"] = example.model_copy(update={"flows": {FlowName.PASTE_CODE: renewing}})
        r = await http.post("/api/auth/start", json={"user_id": "rita", "provider": "example"})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        body = await wait_session(http, sid, lambda b: signin_of(b).get("awaiting_code") is True, "code prompt")
        first = signin_of(body)
        assert first["message"] is None and first["detail"] is None and first["renewed"] is False, first
        assert str(first["url"]).startswith(f"{at}/authorize?")

        r = await http.post(f"/api/auth/session/{sid}/code", json={"code": "not-the-code"})
        assert r.status_code == 200, r.text
        body = await wait_session(http, sid, lambda b: bool(signin_of(b).get("detail")), "the CLI's refusal")
        again = signin_of(body)
        assert body["status"] == "awaiting_user", body
        assert again["message"] == REFUSED and body["message"] == REFUSED, body
        assert again["renewed"] is True and again["url"] != first["url"], again
        assert str(again["url"]).startswith(f"{at}/authorize?")
        assert str(again["detail"]).startswith("Invalid code (invalid_grant)"), again  # the CLI's own words
        assert "Invalid code" not in str(body["message"])
        events = (await http.get(f"/api/auth/session/{sid}/events")).json()
        said = {e["name"]: e["detail"] for e in events}
        assert "Invalid code (invalid_grant)" in said["code refused"], events
        assert said["sign-in link renewed"] == "a new sign-in link is ready"
        assert not [e for e in events if "not-the-code" in str(e)]  # the person's code is in no event

        body = await wait_session(http, sid, lambda b: signin_of(b).get("awaiting_code") is True, "asked again")
        code = await asyncio.to_thread(approve_and_read_code, netns, str(signin_of(body)["url"]))  # the new link
        r = await http.post(f"/api/auth/session/{sid}/code", json={"code": code})
        assert r.status_code == 200, r.text
        body = await wait_session(http, sid, lambda b: False, "completion")
        assert body["status"] == "completed", body


@pytest.mark.netns
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
async def test_the_page_shows_the_refusal_and_the_new_link(make_settings: Callable[..., Settings]) -> None:
    """The viewer page in Chromium: a wrong code pasted there → the plain words, the Open button now leads to the
    new link (and the link to copy is the new one), the CLI's own words only under Details; the new link signs in."""
    settings = make_settings(**idp_env(IDP_PORT + 2), HEARTH_SIGNIN_MODE="direct")
    netns = settings.fabric_netns
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
        running_idp(settings, IDP_PORT + 2, auto_approve=False),
        chromium() as browser,
    ):
        example = ctl.ctl.providers["example"]
        paste = example.flows[FlowName.PASTE_CODE]
        renewing = paste.model_copy(update={"env": {**paste.env, "HEARTH_EXAMPLE_RENEW": "1"}})
        ctl.ctl.providers["example"] = example.model_copy(update={"flows": {FlowName.PASTE_CODE: renewing}})
        started = (await http.post("/api/auth/start", json={"user_id": "rosa", "provider": "example"})).json()
        page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
        await page.goto(started["viewer_url"])
        await page.wait_for_selector("#paste-input", state="visible", timeout=60_000)
        first = await page.get_attribute("#open", "href")
        await page.fill("#paste-input", "not-the-code")
        await page.click("#paste-submit")
        await page.wait_for_function(f"document.getElementById('cli-message').textContent === {REFUSED!r}")
        await page.wait_for_function(f"document.getElementById('open').href !== {first!r}")
        new = await page.get_attribute("#open", "href")
        assert new is not None and new.startswith(f"{issuer(IDP_PORT + 2)}/authorize?") and new != first
        assert await page.input_value("#link") == new
        # the new link stands out: its steps outlined, a "New link" badge on the button, which has the focus
        assert await page.evaluate("document.getElementById('open-step').classList.contains('renewed')")
        assert await page.evaluate("document.getElementById('link-step').classList.contains('renewed')")
        assert await page.get_attribute("#open", "data-badge") == "New link"
        assert await page.evaluate("document.activeElement.id") == "open"
        assert "Invalid code" not in await page.evaluate("document.body.innerText")
        await page.click("#details summary")
        assert "sign-in tool said: Invalid code (invalid_grant)" in await page.inner_text("#stages")
        await page.wait_for_selector("#paste-input", state="visible", timeout=60_000)
        code = await asyncio.to_thread(approve_and_read_code, netns, new)
        await page.fill("#paste-input", code)
        await page.click("#paste-submit")
        await page.wait_for_function("window.hearthStatus.status === 'completed'", timeout=60_000)
