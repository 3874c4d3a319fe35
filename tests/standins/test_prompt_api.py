"""Prompt conformance through hearth's API with the real, pinned CLIs (hearth/standins/promptapi.py): a real
controller (API on loopback), the user's real CLI sandbox (netns driver) and its agent's runner, the CLI reaching the
model-API stand-in (hearth/standins/modelapi.py) over the real path: the internet stand-in's DNS, the fabric's
egress and HTTPS under a throwaway CA trusted through HEARTH_EXTRA_CA_CERTS (hearth/standins/internet.py).

Per CLI, in one controller: the answer streamed over SSE to `done` with its text intact; a refresh during a prompt
(vault version +1, the sandbox holds the rotated file); a cancel mid-stream (no CLI process left in the sandbox); a
revoked credential (failed at step credentials, the credential needs_signin, the next prompt 409)."""

from __future__ import annotations

import os

import pytest

from hearth.guest import clis
from hearth.standins import modelapi, promptapi

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]


@pytest.mark.parametrize("name", ["claude_code", "codex", "gemini_cli"])
async def test_real_cli_through_the_prompt_api(name: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if clis.installed() is None:
        pytest.fail("the pinned CLIs are not installed: run `bash scripts/setup.sh`")
    async with promptapi.world() as w:
        for scenario in promptapi.SCENARIOS:
            res = await promptapi.check(w, name, scenario)
            assert res.ok, f"{scenario}: {res.failed_step}\n{res.prompt}"
            if scenario == "answer":
                assert res.text == modelapi.ANSWER and res.prompt["conversation_id"]
                assert res.prompt["timings"].get("first_output") and res.prompt["usage"]
            if scenario == "refresh":
                assert res.extra["version"] == res.extra["was"] + 1 and res.extra["refreshes"] == 1
            if scenario == "cancel":
                assert res.extra["running"] >= 1 and res.prompt["status"] == "cancelled"
            if scenario == "revoked":
                assert (res.extra["credential"], res.extra["next"]) == ("needs_signin", 409)
