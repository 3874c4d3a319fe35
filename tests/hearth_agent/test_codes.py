"""The person's sign-in codes never leave the agent in a reason, an event or a log line (issue 20, item 4): the one
scrub function (hearth_agent/codes.py) on its own, and a real CLI run through the agent's API whose output and
failure carry the code (a device code, a pasted code)."""

from __future__ import annotations

import json
import re

from hearth_agent.codes import MASK, scrub_codes
from tests.hearth_agent.test_signin import (  # fixtures and helpers shared with the other sign-in tests
    Agent,
    agent,
    agent_log,
    controller,
    fake_provider,
)
from tests.waits import eventually_sync

__all__ = ["agent", "agent_log", "controller"]


def test_scrub_removes_known_codes_pattern_matches_and_device_code_shapes() -> None:
    pattern = re.compile(r"use (?P<code>\w{3}_\w{3}) now")
    text = "enter the code DXJF-FLSV at https://x.test/device; pasted secret-paste-1; use abc_def now; ABCD-12345"
    out = scrub_codes(text, known=["secret-paste-1"], patterns=[pattern])
    for code in ("DXJF-FLSV", "secret-paste-1", "abc_def", "ABCD-12345"):
        assert code not in out, out
    assert out == f"enter the code {MASK} at https://x.test/device; pasted {MASK}; use {MASK} now; {MASK}"
    # Ordinary words and numbers stay: dates, versions, lower-case hyphenated words, short "known" strings.
    kept = "2026-1206 TLS-1.3 sign-in x86-64 exited with 1 (expired_token)"
    assert scrub_codes(kept, known=["1", "in"]) == kept


DEVICE_CLI = r"""
import sys, time
code = "k7q-" + "zz91x"  # not in the command line the agent reports (login_started)
print(f"To sign in, open https://auth.test/device and enter the code {code}", flush=True)
time.sleep(0.5)
print(f"error: the code {code} was denied", flush=True)
sys.exit(2)
"""

PASTE_CLI = r"""
import sys
print("visit: https://auth.test/authorize?state=s1", flush=True)
code = input("Paste code here > ")
print(f"Exchanging {code} for tokens", flush=True)
sys.exit(5)
"""


def _everything_reported(agent: Agent, agent_log: list[str]) -> str:
    ctl = agent.controller
    status = agent.status()
    return json.dumps([status, ctl.events, agent_log])


def test_a_device_code_in_the_clis_failure_is_never_reported(agent: Agent, agent_log: list[str]) -> None:
    prov = fake_provider(DEVICE_CLI, flow="device_code", code_pattern=r"enter the code (?P<code>\S+)")
    assert agent.call("POST", "/v1/login", {"provider": prov})[0] == 202
    shown = eventually_sync(lambda: agent.controller.signin[0] if agent.controller.signin else None, 30, "device code")
    assert shown["user_code"] == "k7q-zz91x"  # the person sees it: that is where it belongs
    status = agent.finished()
    assert status["state"] == "failed" and status["reason"].startswith("CLI exited with 2"), status
    assert f"the code {MASK} was denied" in status["reason"], status
    failed = [e for e in agent.controller.events if e["event"] == "login_failed"]
    assert failed and MASK in failed[0]["detail"]
    everything = _everything_reported(agent, agent_log)
    assert "k7q-zz91x" not in everything, everything[everything.find("k7q-zz91x") - 300 :][:400]


def test_a_pasted_code_in_the_clis_failure_is_never_reported(agent: Agent, agent_log: list[str]) -> None:
    prov = fake_provider(PASTE_CLI, flow="paste_code", code_prompt="Paste code here >")
    assert agent.call("POST", "/v1/login", {"provider": prov})[0] == 202
    eventually_sync(lambda: next((s for s in agent.controller.signin if s["awaiting_code"]), None), 30, "code prompt")
    assert agent.call("POST", "/v1/login/code", {"code": "pasted-abc-def"}) == (200, {"sent": True})
    status = agent.finished()
    assert status["state"] == "failed" and f"Exchanging {MASK} for tokens" in status["reason"], status
    assert "pasted-abc-def" not in _everything_reported(agent, agent_log)
