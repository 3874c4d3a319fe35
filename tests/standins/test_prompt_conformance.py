"""Prompt conformance with the real, pinned CLIs (hearth/standins/promptcheck.py), offline: each CLI runs from its
definition's `prompt` section through the CLI sandbox's agent runner (hearth_agent/promptrun.py, the code the
sandbox runs), inside a network namespace created here, against the model-API stand-in (hearth/providers/
modelapi.py on the providers' HTTPS stand-in: a test CA, a hosts file bound over /etc/hosts for the CLI only); the
batches go to a real HTTP receiver standing in for the controller's callback endpoint.

- answer: text … usage … done, the text intact, the CLI's conversation id;
- refresh: an expired access token is refreshed by the CLI during the prompt (the refresh token rotated for Claude
  Code and Codex; Google keeps its own), the rewritten file is pushed, and it is what the sandbox holds;
- revoked: the account revoked at the stand-in → failed at step credentials, needs_signin in the CLI's own words;
- cancel: mid-stream (the stand-in has sent part of a slow answer) → cancelled, none of the CLI's processes left.
- write: the model asks for a file in the workspace: read_only (plan mode) refuses, workspace_write writes it.

Through the controller's API (vault version +1, 409 after needs_signin): tests/standins/test_prompt_api.py."""

from __future__ import annotations

import os

import pytest

from hearth.guest import clis
from hearth.providers.registry import load
from hearth.standins import modelapi, promptcheck

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.sqlite_pass]
PROVIDERS = load()
INSTALLED = clis.installed()
REAL = ("claude_code", "codex", "gemini_cli")


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if INSTALLED is None:
        pytest.fail("the pinned CLIs are not installed: run `bash scripts/setup.sh`")


@pytest.mark.parametrize("scenario", promptcheck.SCENARIOS)
@pytest.mark.parametrize("name", REAL)
def test_real_cli_answers_prompts_through_the_agent_offline(name: str, scenario: str) -> None:
    res = promptcheck.check(PROVIDERS[name], scenario, INSTALLED)
    assert res.ok, f"{res.failed_step}\nfinal: {res.extra.get('final')}\nrequests: {res.extra.get('requests')}"
    assert res.cli_version and "unknown" not in res.cli_version
    final = res.extra["final"]
    if scenario in ("answer", "refresh"):
        assert res.status == "completed" and res.text == modelapi.ANSWER
        assert res.seconds_to_first_text is not None and res.seconds_to_done is not None
        assert res.extra["event_types"][-1] == "done"
    if scenario == "refresh":
        assert res.extra["pushed"] == [f.target for f in PROVIDERS[name].credential_files]
    if scenario == "revoked":
        assert (res.status, final["step"]) == ("failed", "credentials") and final["needs_signin"]
        assert res.text == ""
    if scenario == "cancel":
        assert res.status == "cancelled" and res.text != modelapi.ANSWER
        assert res.extra["tree"] >= 1


def test_without_the_pinned_clis_the_check_fails_at_install() -> None:
    """The control: no installed CLIs is an install failure, not a pass."""
    res = promptcheck.check(PROVIDERS["claude_code"], "answer", None)
    assert res.failed_step.startswith("install:")


@pytest.mark.parametrize("name", ["claude_code", "gemini_cli"])
def test_read_only_refuses_a_write_that_workspace_write_allows(name: str) -> None:
    """The model asks the CLI to write a file in the workspace with the CLI's own tool: plan mode (read_only) refuses,
    in the CLI's words; workspace_write writes it there. (Codex offers its tools from a model catalog the stand-in
    does not serve.)"""
    res = promptcheck.check(PROVIDERS[name], "write", INSTALLED)
    assert res.ok, f"{res.failed_step}\n{res.extra.get('read_only')}\n{res.extra.get('workspace_write')}"
    refused = res.extra["read_only"]["tools"]
    assert refused[0]["name"] in ("Write", "write_file") and "plan mode" in refused[-1]["result"].lower()
    assert res.extra["workspace_write"]["written"] is True
