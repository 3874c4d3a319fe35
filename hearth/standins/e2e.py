"""Sign-ins end to end through the real path, offline: the internet stand-in (hearth/standins/internet.py) as the
fabric's uplink, a real controller (hearth.serving.local) on a throwaway data dir, Debian's Chromium driven by
Playwright as the person. Shared by tests/standins/test_e2e.py and `hearth providers check --e2e`.

- remote_browser: `POST /api/auth/start`; the person opens the viewer page; Chromium in the sandbox resolves the
  provider's name through the fabric's DNS, loads its authorize page over the egress (TLS verified against
  HEARTH_EXTRA_CA_CERTS); once the page's full-page "Authorize" button is drawn on the viewer's canvas, the person
  clicks it there (real pointer input through noVNC); the redirect reaches the CLI's loopback callback.
- direct: the viewer page shows the link (and a device code); the person's own browser — Chromium in the host's
  side of the stand-in, resolving through its DNS — opens it: enters the device code, or clicks "Authorize" and
  pastes the code its page shows into the viewer page.
Either way the session must go captured → delivered → completed, the credential files in the user's CLI sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from hearth.providers.model import FlowName, SigninMode
from hearth.serving.local import LocalController, local_controller, scratch_settings
from hearth.standins.inetweb import Seen
from hearth.standins.internet import Internet, internet
from hearth.standins.proxyserver import Seen as ProxySeen
from hearth.standins.standin import DEVICE_USER_CODE

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
SHOTS = os.environ.get("HEARTH_E2E_SHOTS", "")  # a directory: the viewer's screenshot when a page is not drawn
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWER_READY = "window.hearthState && window.hearthState.startsWith('ready')"
STATES = ["starting", "ready", "awaiting_user", "credentials_captured", "delivered", "completed"]
ENDED = ("completed", "failed", "cancelled", "expired")
BUTTON_RGB = (0x1A, 0x7F, 0x37)  # the stand-in's "Authorize" button (hearth/standins/inetweb.py)
TOKEN_ENDPOINTS = {
    "claude_code": "POST platform.claude.com/v1/oauth/token",
    "codex": "POST auth.openai.com/oauth/token",
    "gemini_cli": "POST oauth2.googleapis.com/token",
    "example": "POST idp.example.com/token",
}
# The colour of noVNC's canvas a quarter in from its top left (on the button, clear of its word), as [r, g, b].
SPOT = 0.25
CENTRE = f"""() => {{
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width) return null;
  const d = c.getContext('2d').getImageData(Math.floor(c.width * {SPOT}), Math.floor(c.height * {SPOT}), 1, 1).data;
  return [d[0], d[1], d[2]];
}}"""


@dataclass
class Outcome:
    provider: str
    mode: str
    flow: str = ""
    status: str = ""
    states: list[str] = field(default_factory=list)
    failed: str = ""  # the first step that went wrong, in words
    seconds: dict[str, float] = field(default_factory=dict)  # start → each milestone
    seen: list[Seen] = field(default_factory=list)  # what the stand-in answered during this sign-in
    proxied: list[ProxySeen] = field(default_factory=list)  # what its upstream proxy carried meanwhile

    @property
    def requests(self) -> list[str]:
        return [s.line() for s in self.seen]

    @property
    def ok(self) -> bool:
        return not self.failed and self.status == "completed"


@dataclass
class Run:
    inet: Internet
    ctl: LocalController
    http: httpx.AsyncClient
    viewer: Browser  # the person's browser for the viewer page (the host, loopback)
    person: Browser  # the person's browser for the provider's pages (the host's side of the stand-in)


def settings_env(inet: Internet) -> dict[str, str]:
    return {
        **inet.settings_env(),
        "HEARTH_EGRESS": "signin",  # sign-in and CLI sandboxes go out (the default-to-be; plain desktops do not)
        "HEARTH_READY_TIMEOUT": "90",
        "OAUTH_FLOW_TIMEOUT": "240",
    }


@contextlib.asynccontextmanager
async def e2e_run(
    env: Mapping[str, str] | None = None, prefix: str = "hearth-e2e", proxy: bool = False
) -> AsyncIterator[Run]:
    """The stand-in, a controller attached to it (`proxy`: its users going out through the stand-in's upstream
    proxy, HEARTH_EGRESS_PROXY), and the person's two browsers; all removed on exit."""
    from playwright.async_api import async_playwright

    with contextlib.ExitStack() as stack:
        inet = stack.enter_context(internet(f"{prefix}i"))
        full = {**settings_env(inet), **(inet.proxy_env() if proxy else {}), **(env or {})}
        s = stack.enter_context(scratch_settings(full, prefix))
        async with (
            local_controller(s) as ctl,
            httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
            async_playwright() as pw,
        ):
            viewer = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                pin = f"--ignore-certificate-errors-spki-list={inet.spki_pin()}"
                exe = inet.person_browser_argv()[0]
                person = await pw.chromium.launch(executable_path=exe, args=[*ARGS, pin])
                try:
                    yield Run(inet, ctl, http, viewer, person)
                finally:
                    await person.close()
            finally:
                await viewer.close()


async def _session(run: Run, sid: str) -> dict[str, Any]:
    body: dict[str, Any] = (await run.http.get(f"/api/auth/session/{sid}")).json()
    return body


class Ended(Exception):
    """The session ended (failed, cancelled, expired) while the person was still at a step."""


async def _until(what: str, timeout: float, probe: Any, run: Run | None = None, sid: str = "") -> Any:
    """Poll `probe()` until it gives something; with `run`, a session that ended meanwhile stops the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await probe()
        if got:
            return got
        if run is not None and (body := await _ended(run, sid)) is not None:
            raise Ended(f"{what}: the session ended {body['status']}: {body.get('reason')}")
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


async def _shown(page: Page, js: str) -> bool:
    return bool(await page.evaluate(js))


async def sign_in(run: Run, provider: str, mode: SigninMode, user: str, timeout: float = 240) -> Outcome:
    """One sign-in of `user` with `provider` in `mode`, as described in the module docstring."""
    out = Outcome(provider, mode.value)
    definition = run.ctl.ctl.providers[provider]
    out.flow = definition.flow_for(mode).value
    seen_before, proxied_before = len(run.inet.traffic.seen), len(run.inet.proxy.seen)
    run.inet.net.approved.clear()
    t0 = time.monotonic()
    page: Page | None = None
    sid = ""
    context = await run.viewer.new_context(viewport={"width": 1280, "height": 860})
    try:
        r = await run.http.post("/api/auth/start", json={"user_id": user, "provider": provider, "mode": mode.value})
        if r.status_code != 201:
            out.failed = f"start: HTTP {r.status_code}: {r.text[:300]}"
            return out
        sid, viewer_url = r.json()["session_id"], r.json()["viewer_url"]
        page = await context.new_page()
        await page.goto(viewer_url)
        if mode is SigninMode.REMOTE_BROWSER:
            await _click_authorize(run, sid, out, page, seen_before, t0)
        else:
            await _direct(run, sid, out, page, t0)
        body = await _until("completion", timeout, lambda: _ended(run, sid))
        out.status = str(body["status"])
        out.seconds["completed"] = round(time.monotonic() - t0, 3)
        events = (await run.http.get(f"/api/auth/session/{sid}/events")).json()
        out.states = [e["name"] for e in events if e["kind"] == "state"]
        if out.status != "completed":
            out.failed = f"session {out.status}: {body.get('reason')}"
        elif out.states != STATES:
            out.failed = f"states {out.states}, expected {STATES}"
        else:
            await _delivered(run, out, user)
    except Ended as exc:
        out.failed, out.status = str(exc), "failed"
    except Exception as exc:  # a step that did not happen: reported as the outcome, not raised
        out.failed = out.failed or f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    finally:
        await context.close()
        if sid:  # its sandbox gone (Chromium and the CLI with it) before the next sign-in counts what it sees
            with contextlib.suppress(Exception):
                await _until("the sandbox removed", 30, lambda: _sandbox_gone(run, sid))
        out.seen = run.inet.traffic.seen[seen_before:]
        out.proxied = run.inet.proxy.seen[proxied_before:]
    if out.ok and TOKEN_ENDPOINTS[provider] not in out.requests:
        out.failed = f"the CLI never reached {TOKEN_ENDPOINTS[provider]} through the stand-in"
    return out


async def _sandbox_gone(run: Run, sid: str) -> bool:
    return run.ctl.ctl.service.sandboxes.get(sid) is None


async def _ended(run: Run, sid: str) -> dict[str, Any] | None:
    body = await _session(run, sid)
    return body if body["status"] in ENDED else None


async def _click_authorize(run: Run, sid: str, out: Outcome, page: Page, seen_before: int, t0: float) -> None:
    await _until("the desktop shown in the viewer", 120, lambda: _shown(page, VIEWER_READY), run, sid)
    out.seconds["desktop"] = round(time.monotonic() - t0, 3)

    async def requested() -> bool:
        return any(
            "Chrome" in s.user_agent and ("response_type=code" in s.path) for s in run.inet.traffic.seen[seen_before:]
        )

    await _until("the provider's authorize page requested by the sandbox's Chromium", 180, requested, run, sid)
    out.seconds["page_requested"] = round(time.monotonic() - t0, 3)

    last: list[Any] = [None]

    async def drawn() -> bool:
        rgb = last[0] = await page.evaluate(CENTRE)
        return rgb is not None and all(abs(a - b) < 24 for a, b in zip(rgb, BUTTON_RGB, strict=True))

    try:
        await _until("the Authorize button drawn in the viewer", 60, drawn, run, sid)
    except TimeoutError as exc:
        if SHOTS:
            await page.screenshot(path=f"{SHOTS}/{out.provider}-{out.mode}.png")
        raise TimeoutError(f"{exc} (the desktop shows rgb {last[0]} there)") from None
    out.seconds["page_drawn"] = round(time.monotonic() - t0, 3)
    box = await page.locator("#screen canvas").bounding_box()
    if box is None:
        raise RuntimeError("the viewer has no canvas")
    await page.mouse.click(box["x"] + box["width"] * SPOT, box["y"] + box["height"] * SPOT)  # through noVNC
    out.seconds["clicked"] = round(time.monotonic() - t0, 3)


OPEN_SHOWN = "(() => { const a = document.getElementById('open'); return !!(a && a.offsetParent && a.href); })()"
CODE_SHOWN = "(() => { const c = document.getElementById('code'); return !!(c && c.textContent.length > 4); })()"
PASTE_SHOWN = "(() => { const p = document.getElementById('paste-input'); return !!(p && p.offsetParent); })()"


async def _direct(run: Run, sid: str, out: Outcome, page: Page, t0: float) -> None:
    await _until("the sign-in link shown on the viewer page", 120, lambda: _shown(page, OPEN_SHOWN), run, sid)
    link = await page.get_attribute("#open", "href")
    if not link:
        raise RuntimeError("the viewer page shows no sign-in link")
    out.seconds["link_shown"] = round(time.monotonic() - t0, 3)
    ctx = await run.person.new_context()
    try:
        theirs = await ctx.new_page()
        await theirs.goto(link)
        if out.flow == FlowName.DEVICE_CODE.value:
            await _until("the device code shown on the viewer page", 60, lambda: _shown(page, CODE_SHOWN), run, sid)
            code = (await page.inner_text("#code")).strip()
            if out.provider != "example" and code != DEVICE_USER_CODE:
                raise RuntimeError(f"the viewer shows device code {code!r}; the provider issued {DEVICE_USER_CODE!r}")
            await theirs.fill("#user_code", code)
            await theirs.click("#approve")
            await theirs.wait_for_selector("text=Approved", timeout=30_000)
        else:
            await theirs.click("#authorize")
            await theirs.wait_for_selector("#code", timeout=30_000)
            code = (await theirs.inner_text("#code")).strip()
            await _until("the field for the code on the viewer page", 60, lambda: _shown(page, PASTE_SHOWN), run, sid)
            await page.fill("#paste-input", code)
            await page.click("#paste-submit")
        out.seconds["person_done"] = round(time.monotonic() - t0, 3)
    finally:
        await ctx.close()


async def _delivered(run: Run, out: Outcome, user: str) -> None:
    provider = run.ctl.ctl.providers[out.provider]
    files = await run.ctl.ctl.vault.open(user, out.provider)
    if not files:
        out.failed = "nothing sealed in the vault"
        return
    home = run.ctl.ctl.clis.home_of(user)
    missing = [f.target for f in provider.credential_files if not (home / f.target).is_file()]
    if missing:
        out.failed = f"not installed in the CLI sandbox: {missing}"
