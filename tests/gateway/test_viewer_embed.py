"""HEARTH_EMBED_ORIGINS and return_url: the origins are checked and normalised, a return_url off them is refused with
a 400 naming the fix (nothing is created), an allowed one reaches the page's status; the page's CSP lets only hearth
and those origins frame it. The words the page and the API's `message` say come from one place and never show raw
state names."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest

from hearth.config import Settings
from hearth.errors import ConfigError
from hearth.gateway.embed import ReturnUrlError, check_return_url, frame_ancestors, parse_origins
from hearth.gateway.qr import qr_svg
from hearth.session.states import Status
from hearth.signin import wording
from tests.conftest import running_controller
from tests.signinkit import idp_env, running_idp

IDP_PORT = 9406


def test_origins_are_normalised_and_a_bad_one_names_the_fix() -> None:
    assert parse_origins(" https://App.Example.com:443/ , http://127.0.0.1:8000,https://app.example.com") == (
        "https://app.example.com",
        "http://127.0.0.1:8000",
    )
    assert parse_origins("") == ()
    for bad in ("https://app.example.com/settings", "app.example.com", "ftp://x.org", "https://u:p@x.org", "*"):
        with pytest.raises(
            ValueError, match=r"is not an origin; give scheme://host\[:port\] .* e\.g\. https://app\.example\.com"
        ):
            parse_origins(bad)
    assert frame_ancestors(()) == "frame-ancestors 'self'"
    assert frame_ancestors(("https://a.example",)) == "frame-ancestors 'self' https://a.example"


def test_a_bad_origin_setting_is_a_config_problem(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match=r"HEARTH_EMBED_ORIGINS: .*'https://a\.example/x' is not an origin"):
        make_settings(HEARTH_EMBED_ORIGINS="https://a.example/x")
    assert make_settings(HEARTH_EMBED_ORIGINS="https://A.example").embed_origins == ("https://a.example",)


def test_return_url_must_be_on_an_allowed_origin() -> None:
    allowed = ("https://app.example.com", "http://127.0.0.1:8000")
    assert check_return_url("https://app.example.com/done?x=1", allowed) == "https://app.example.com/done?x=1"
    assert check_return_url("https://APP.example.com:443/", allowed) == "https://APP.example.com:443/"
    with pytest.raises(ReturnUrlError, match="add it to HEARTH_EMBED_ORIGINS"):
        check_return_url("https://evil.example/done", allowed)
    with pytest.raises(ReturnUrlError, match="add it to HEARTH_EMBED_ORIGINS"):
        check_return_url("http://127.0.0.1:8001/", allowed)  # another port is another origin
    with pytest.raises(ReturnUrlError, match=re.escape("set HEARTH_EMBED_ORIGINS=https://app.example.com")):
        check_return_url("https://app.example.com/done", ())
    for bad in ("javascript:alert(1)", "/relative", "https://app.example.com/a b", "https://u@app.example.com/"):
        with pytest.raises(ReturnUrlError, match="return_url must be"):
            check_return_url(bad, allowed)


RAW = re.compile(r"awaiting_user|credentials_captured|\[[a-z_]+\]|exit(ed)? (code )?\d|\.json|/home/|_")


@pytest.mark.parametrize("mode", ["remote_browser", "direct"])
def test_every_word_is_plain(mode: str) -> None:
    """No state names, tags, exit codes or paths, for every status and prompt of both modes; the stepper covers
    every non-ending status in order."""
    order = [wording.step_of(s) for s in Status]
    assert order == [
        wording.Step.PREPARING,
        wording.Step.PREPARING,
        wording.Step.SIGN_IN,
        wording.Step.SIGN_IN,
        wording.Step.SAVING,
        wording.Step.SAVING,
        wording.Step.DONE,
        None,
        None,
        None,
    ]
    for status in Status:
        for name in ("Claude", None):
            for link, code, awaiting, watching in [(False,) * 4, (True, True, False, False), (True, False, True, True)]:
                said = wording.words(
                    status,
                    mode=mode,
                    name=name,
                    has_link=link,
                    user_code=code,
                    awaiting_code=awaiting,
                    watching=watching,
                    queue_position=3,
                    hop="agent",
                )
                for text in (said.headline, said.message, said.next_step or ""):
                    assert not RAW.search(text), (status, text)
    linkless = wording.step_for(Status.READY, mode=mode, has_link=False)
    assert linkless is (wording.Step.PREPARING if mode == "direct" else wording.Step.SIGN_IN)
    assert wording.step_for(Status.AWAITING_USER, mode=mode, has_link=True) is wording.Step.SIGN_IN
    assert wording.step_for(Status.READY, mode=mode, has_link=False, watching=True) is wording.Step.SIGN_IN
    done = wording.words(Status.COMPLETED, mode=mode, name="Claude")
    assert done.next_step and "in your workspace" not in done.headline
    cancelled = wording.words(Status.CANCELLED, mode=mode, name="Claude")
    assert "API client" not in cancelled.message and "cancelled" not in cancelled.message
    assert wording.open_button(wording.account_name("claude_code", "Claude Code")) == "Open the Claude sign-in page"


def test_qr_code_is_inline_svg_of_the_link() -> None:
    svg = qr_svg("https://example.com/device?x=" + "a" * 400)
    assert svg is not None and svg.startswith("<svg") and "<script" not in svg
    assert qr_svg("https://example.com/" + "a" * 3000) is None  # too long to scan: the page shows the link only


@pytest.mark.netns
async def test_return_url_and_frame_ancestors_through_the_api(make_settings: Callable[..., Settings]) -> None:
    app = "http://127.0.0.1:8123"
    settings = make_settings(HEARTH_EMBED_ORIGINS=f"{app},https://app.example.com", **idp_env(IDP_PORT))
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
        running_idp(settings, IDP_PORT, auto_approve=False),
    ):
        start = {"user_id": "back", "provider": "example", "mode": "direct"}
        r = await http.post("/api/auth/start", json={**start, "return_url": "https://evil.example/x"})
        assert r.status_code == 400, r.text
        error = r.json().get("error") or r.json().get("detail")
        assert "https://evil.example is not an allowed origin" in error and "HEARTH_EMBED_ORIGINS" in error, error
        assert await ctl.ctl.service.records.list_active() == []  # refused before anything was created

        r = await http.post("/api/auth/start", json={**start, "return_url": f"{app}/settings?done=1"})
        assert r.status_code == 201, r.text
        started = r.json()
        sid, token = started["session_id"], started["viewer_token"]

        page = await http.get(started["viewer_url"])
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == f"frame-ancestors 'self' {app} https://app.example.com"
        assert page.headers["referrer-policy"] == "no-referrer"
        config = json.loads(re.search(r'id="hearth-config" type="application/json">(.*?)</script>', page.text)[1])  # type: ignore[index]
        assert config["embed_origins"] == [app, "https://app.example.com"]
        assert config["ui"] == wording.UI and [s["label"] for s in config["steps"]] == list(
            wording.STEP_LABELS.values()
        )
        forged = await http.get(f"/api/auth/session/{sid}/novnc?token=forged")
        assert forged.status_code == 401 and "frame-ancestors" in forged.headers["content-security-policy"]

        # The status stream carries the return_url and the page's words; the API's message says the same words.
        seen: dict[str, object] = {}
        async with http.stream("GET", f"/api/auth/session/{sid}/status?token={token}") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    seen = json.loads(line[6:])
                    if seen.get("signin"):
                        break
        assert seen["return_url"] == f"{app}/settings?done=1"
        assert seen["step"] == "sign_in" and seen["button"] == "Open the Example sign-in page"
        assert seen["message"] == "Open the Example sign-in page and enter the code shown here."
        assert str(seen["qr"]).startswith("<svg")
        body = (await http.get(f"/api/auth/session/{sid}")).json()
        assert body["message"] == seen["message"]
        await http.post(f"/api/auth/session/{sid}/cancel")
        body = (await http.get(f"/api/auth/session/{sid}")).json()
        assert (
            body["status"] == "cancelled"
            and body["message"] == wording.words(Status.CANCELLED, mode="direct", name="Example").message
        )
