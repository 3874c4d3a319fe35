"""Sign-in flows through the agent's HTTP API with real processes: the example CLI's paste_code and device_code
flows against the example IdP, the code endpoint's checks, and the `signin` pushes the controller receives.
(The person's browser is replaced by urllib requests to the IdP: these are agent-level tests.)"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from hearth_example.idp import IdpState
from tests.hearth_agent.test_signin import (  # fixtures and helpers shared with the loopback tests
    NO_PROXY,
    REPO,
    Agent,
    agent,
    controller,
    example_provider,
    fake_provider,
    idp,
)
from tests.waits import eventually_sync

__all__ = ["agent", "controller", "idp"]


def body(issuer: str, flow: str) -> dict[str, Any]:
    env = {"HEARTH_EXAMPLE_ISSUER": issuer, "PYTHONPATH": str(REPO)}
    return {"provider": example_provider(), "flow": flow, "env": env}


def approve_and_read_code(url: str) -> str:
    """What the person does in their own browser: approve, land on the IdP's /code page, copy the code."""
    with NO_PROXY.open(url, timeout=10) as resp:
        page = resp.read().decode()
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
    base = url.split("/authorize")[0]
    with NO_PROXY.open(base + "/approve", data=urllib.parse.urlencode(fields).encode(), timeout=10) as resp:
        shown = resp.read().decode()  # the redirect is followed to /code
    m = re.search(r"<code id=code>([^<]+)</code>", shown)
    assert m is not None, shown
    return m.group(1)


def test_paste_code_flow_wrong_code_then_right_code(agent: Agent, idp: tuple[str, IdpState]) -> None:
    issuer, _ = idp
    ctl = agent.controller
    assert agent.call("POST", "/v1/login", body(issuer, "paste_code")) == (202, {"started": True})
    first = eventually_sync(lambda: next((s for s in ctl.signin if s["awaiting_code"]), None), 30, "code prompt push")
    assert first["flow"] == "paste_code" and first["user_code"] is None and first["message"] is None
    assert (
        first["url"].startswith(issuer + "/authorize?")
        and "redirect_uri=" + urllib.parse.quote(issuer + "/code", safe="") in first["url"]
    )
    status = agent.status()
    assert status["awaiting_code"] and status["flow"] == "paste_code"
    assert "Paste the authorization code:" in status["screen_tail"]
    assert agent.browser.opened == []  # direct flows never open the sandbox's browser

    assert agent.call("POST", "/v1/login/code", {"code": "not-the-code"}) == (200, {"sent": True})
    assert agent.call("POST", "/v1/login/code", {"code": "again"})[0] == 409  # nothing waits for a code now
    retry = eventually_sync(lambda: next((s for s in ctl.signin if s["message"]), None), 30, "the CLI's refusal")
    assert retry["awaiting_code"] and retry["message"].startswith("Invalid code (invalid_grant)")
    assert agent.status()["state"] == "url_captured"

    code = approve_and_read_code(first["url"])
    assert agent.call("POST", "/v1/login/code", {"code": code}) == (200, {"sent": True})
    status = agent.finished()
    assert status["state"] == "captured", status
    assert status["awaiting_code"] is False
    assert ctl.credentials and ctl.credentials[0]["files"][0]["target"] == ".example/credentials.json"
    assert "code_submitted" in ctl.names()
    assert all(first["url"] not in str(e) for e in ctl.events)  # the full URL only in signin pushes


def test_device_code_flow_pushes_url_and_code(agent: Agent, idp: tuple[str, IdpState]) -> None:
    issuer, state = idp
    ctl = agent.controller
    assert agent.call("POST", "/v1/login", body(issuer, "device_code"))[0] == 202
    shown = eventually_sync(lambda: ctl.signin[0] if ctl.signin else None, 30, "device code push")
    assert shown["flow"] == "device_code" and shown["url"] == issuer + "/device"
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", shown["user_code"]) and shown["awaiting_code"] is False
    assert agent.call("POST", "/v1/login/code", {"code": shown["user_code"]})[0] == 409  # not a paste flow
    form = urllib.parse.urlencode({"user_code": shown["user_code"]}).encode()
    with NO_PROXY.open(issuer + "/device/approve", data=form, timeout=10) as resp:
        assert resp.status == 200
    status = agent.finished()
    assert status["state"] == "captured", status
    assert [e["kind"] for e in state.events if e["kind"].startswith(("device", "token"))] == [
        "device_code",
        "device_approved",
        "token_issued",
    ]
    assert len(ctl.signin) == 1  # what the person sees did not change


def test_code_endpoint_checks_its_input(agent: Agent, idp: tuple[str, IdpState]) -> None:
    issuer, _ = idp
    assert agent.call("POST", "/v1/login/code", {"code": "abc"}) == (409, {"error": "no sign-in is running"})
    assert agent.call("POST", "/v1/login", body(issuer, "paste_code"))[0] == 202
    eventually_sync(lambda: agent.status()["awaiting_code"], 30, "the code prompt")
    for bad, needle in (
        ({"code": ""}, "non-empty"),
        ({"code": 12345}, "non-empty string"),
        ({"code": "abc\x1b[2J"}, "control characters"),
        ({"code": "abc\rrm -rf"}, "control characters"),
        ({"code": "x" * 513}, "longer than 512"),
    ):
        code, out = agent.call("POST", "/v1/login/code", bad)
        assert code == 400 and needle in out["error"], (bad, out)
    assert agent.status()["awaiting_code"]  # refused input typed nothing
    assert agent.call("POST", "/v1/cancel-login")[1]["cancelled"] is True


def test_loopback_flow_takes_no_code_and_unknown_flows_are_named(agent: Agent) -> None:
    script = "import time; print('https://auth.test/authorize?x=1', flush=True); time.sleep(30)"
    assert agent.call("POST", "/v1/login", {"provider": fake_provider(script), "flow": "loopback"})[0] == 202
    eventually_sync(lambda: agent.status()["state"] == "url_captured", 30, "URL")
    code, out = agent.call("POST", "/v1/login/code", {"code": "abc"})
    assert code == 409 and "loopback flow; it takes no pasted code" in out["error"]
    code, out = agent.call("POST", "/v1/login", {"provider": fake_provider("pass"), "flow": 3})
    assert code == 400 and "flow must be" in out["error"]
    agent.call("POST", "/v1/cancel-login")


def test_a_cli_that_prints_no_url_fails_naming_the_step(agent: Agent) -> None:
    script = "print('Welcome! Nothing to see here.', flush=True); raise SystemExit(3)"
    prov = fake_provider(script, flow="paste_code", code_prompt="Paste")
    assert agent.call("POST", "/v1/login", {"provider": prov})[0] == 202
    status = agent.finished()
    assert status["reason"].startswith(
        "CLI exited with 3 while waiting for the sign-in URL: Welcome! Nothing to see here."
    ), status
    assert agent.controller.signin == []


FAKE_EXITS_ON_WRONG_CODE = r"""
import json, os, secrets, sys
print("visit: https://auth.test/authorize?state=" + secrets.token_hex(8), flush=True)
code = input("Paste code here > ")
if code != "good":
    print("Couldn't log in: That code wasn't accepted.", flush=True)
    sys.exit(1)
os.makedirs(os.path.expanduser("~/.fake"), exist_ok=True)
with open(os.path.expanduser("~/.fake/creds.json"), "w") as f:
    json.dump({"token": "t"}, f)
"""


def test_a_paste_cli_that_exits_on_a_wrong_code_is_started_again(agent: Agent) -> None:
    ctl = agent.controller
    prov = fake_provider(FAKE_EXITS_ON_WRONG_CODE, flow="paste_code", code_prompt="Paste code here >")
    assert agent.call("POST", "/v1/login", {"provider": prov})[0] == 202
    first = eventually_sync(lambda: next((s for s in ctl.signin if s["awaiting_code"]), None), 30, "code prompt")
    assert agent.call("POST", "/v1/login/code", {"code": "bad"}) == (200, {"sent": True})
    again = eventually_sync(
        lambda: next((s for s in ctl.signin if s["message"]), None), 30, "the refusal, after a restart"
    )
    assert again["awaiting_code"] and again["message"] == "Couldn't log in: That code wasn't accepted."
    assert again["url"] != first["url"]  # the new run's URL (a new state)
    assert "login_restarted" in ctl.names()
    assert agent.call("POST", "/v1/login/code", {"code": "good"}) == (200, {"sent": True})
    assert agent.finished()["state"] == "captured"
