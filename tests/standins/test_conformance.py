"""Provider conformance with the real, pinned CLIs (clis/package-lock.json, installed by scripts/setup.sh and
cached by lock hash: no download per run): every flow a definition declares is driven through the agent's sign-in
routes (hearth_agent/signin.py) inside a network namespace created here, offline. The providers' network is a local
stand-in (hearth/standins/standin.py: HTTPS on 127.0.0.1:443 in that namespace, a test CA trusted through
NODE_EXTRA_CA_CERTS / SSL_CERT_FILE, a hosts file bound over /etc/hosts for the CLI only).

Per flow: the sign-in URL with the flow's redirect is captured; the person's part is done (loopback: the redirect to
the CLI's callback with a code; paste_code: the code typed through POST /v1/login/code; device_code: the pushed
code approved at the stand-in); the CLI writes its credential files, which are pushed with the declared modes.
"""

from __future__ import annotations

import os
import re
import urllib.parse

import pytest

from hearth.guest import clis
from hearth.providers.model import FlowName
from hearth.providers.registry import load
from hearth.standins import conformance

pytestmark = [pytest.mark.netns, pytest.mark.slow]
PROVIDERS = load()
INSTALLED = clis.installed()
REAL = [(n, f) for n, p in sorted(PROVIDERS.items()) if p.cli is not None for f in p.flows]
REDIRECTS = {
    ("claude_code", FlowName.LOOPBACK): "http://localhost:",
    ("claude_code", FlowName.PASTE_CODE): "https://platform.claude.com/oauth/code/callback",
    ("codex", FlowName.LOOPBACK): "http://127.0.0.1:1455/auth/callback",
    ("gemini_cli", FlowName.PASTE_CODE): "https://codeassist.google.com/authcode",
    ("gemini_cli", FlowName.LOOPBACK): "http://127.0.0.1:",
}
TOKEN_ENDPOINTS = {  # found in the CLIs' bundles; the stand-in answers them
    "claude_code": "POST platform.claude.com/v1/oauth/token",
    "codex": "POST auth.openai.com/oauth/token",
    "gemini_cli": "POST oauth2.googleapis.com/token",
}


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if INSTALLED is None:
        pytest.fail("the pinned CLIs are not installed: run `bash scripts/setup.sh`")


@pytest.mark.parametrize(("name", "flow"), REAL, ids=[f"{n}-{f.value}" for n, f in REAL])
def test_real_cli_signs_in_offline_through_the_agent(name: str, flow: FlowName) -> None:
    provider = PROVIDERS[name]
    res = conformance.check(provider, flow, INSTALLED)
    assert res.ok, f"{res.failed_step}\nrequests: {res.extra.get('requests')}\nscreen:\n{res.screen_tail}"
    assert res.cli_version and "unknown" not in res.cli_version
    url = str(res.extra["url"])
    if flow is FlowName.DEVICE_CODE:
        assert url == "https://auth.openai.com/codex/device"
        assert res.prompt is not None and res.prompt["user_code"] == "TEST-CODE9"  # read off the rendered screen
    else:
        redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["redirect_uri"][0]
        assert redirect.startswith(REDIRECTS[(name, flow)]), redirect
    if flow is FlowName.PASTE_CODE:
        assert res.prompt is not None and res.prompt["awaiting_code"] is True  # the code prompt, read on screen
    assert res.credentials_written is True
    assert res.extra["files"] == [(f.target, f.mode) for f in provider.credential_files]
    assert TOKEN_ENDPOINTS[name] in res.extra["requests"]
    # delivered means usable: with only the delivered files in a fresh home, the CLI's own check says signed in
    assert provider.status is not None and re.search(provider.status.signed_in, res.extra["status"])
    want = sorted([f.target for f in provider.credential_files] + [f.target for f in provider.settings_files])
    assert res.extra["delivered"] == want


def test_gemini_without_its_auth_type_setting_is_not_signed_in() -> None:
    """The control for the step above: Gemini CLI's credentials alone (the definition before issue 21) leave it
    asking for an auth method, and the conformance step says so."""
    provider = PROVIDERS["gemini_cli"].model_copy(update={"settings_files": []})
    res = conformance.check(provider, FlowName.PASTE_CODE, INSTALLED)
    assert res.credentials_written is True
    assert res.failed_step.startswith("signed in: with only the delivered files"), res.failed_step
    assert "Please set an Auth method" in res.failed_step


def test_a_missing_cli_fails_at_install_naming_the_fix() -> None:
    res = conformance.run_flow(PROVIDERS["codex"], FlowName.LOOPBACK, None)
    assert res.failed_step == "install: codex is not installed; run `bash scripts/setup.sh`"
    assert not res.url_captured


PASTE = [(n, f) for n, f in REAL if f is FlowName.PASTE_CODE]
PASTED = {"claude_code": "test-code#{state}", "gemini_cli": "test-code"}  # what each provider's page shows


@pytest.mark.parametrize(("name", "flow"), PASTE, ids=[f"{n}-{f.value}" for n, f in PASTE])
def test_a_wrong_pasted_code_shows_the_clis_words_and_the_person_retries(name: str, flow: FlowName) -> None:
    """Gemini asks again with a new URL; Claude Code exits ("That code wasn't accepted"), and the agent starts it
    again. Either way the person sees the CLI's own refusal, then signs in with the right code."""
    provider = PROVIDERS[name]
    res = conformance.run_flow(
        provider, flow, INSTALLED, standin=True, complete=conformance.refused_then_pasted(PASTED[name])
    )
    assert res.ok, f"{res.failed_step}\nscreen:\n{res.screen_tail}"
    assert res.credentials_written is True
    assert res.prompt is not None


def test_ci_markers_in_the_environment_do_not_turn_a_login_headless(monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller run under CI (CI=true, CI_*) once made Gemini CLI exit 41 "Please set an Auth method" instead of
    showing its menu: the agent gives the CLI a person's terminal environment, without CI markers."""
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CI_PIPELINE_ID", "1")
    monkeypatch.setenv("CONTINUOUS_INTEGRATION", "1")
    res = conformance.check(PROVIDERS["gemini_cli"], FlowName.PASTE_CODE, INSTALLED)
    assert res.ok, f"{res.failed_step}\nscreen:\n{res.screen_tail}"
    assert res.url_captured
