"""Provider conformance with the real, pinned CLIs (clis/package-lock.json, installed by scripts/setup.sh and
cached by lock hash): each flow a definition declares is driven through the agent's sign-in code inside a network
namespace created here, offline (loopback only). Checked: the URL with the flow's redirect is captured from what the
CLI shows/hands to its browser hook, and the person's prompt (code prompt) is pushed.

Not done yet (xfail, with the facts found): completing the sign-in against local stand-ins of the providers'
token endpoints (HTTPS with a test CA + name mapping), so credential files are not yet proven for the real CLIs
here; the example provider proves that path (tests/hearth_agent/test_loginrun.py, tests/hearth_agent/test_signin.py).
"""

from __future__ import annotations

import os
import urllib.parse

import pytest

from hearth.providers import clis, conformance
from hearth.providers.model import FlowName
from hearth.providers.registry import load

pytestmark = [pytest.mark.netns, pytest.mark.slow]
PROVIDERS = load()
INSTALLED = clis.installed()
REAL = [(n, f) for n, p in sorted(PROVIDERS.items()) if p.cli is not None for f in p.flows]
NEEDS_NETWORK_FIRST = {
    ("codex", FlowName.DEVICE_CODE): "codex login --device-auth POSTs https://auth.openai.com/api/accounts/"
    "deviceauth/usercode before it shows anything; offline it exits 1 (needs the HTTPS stand-in, not built yet)",
}
REDIRECTS = {
    ("claude_code", FlowName.LOOPBACK): "http://localhost:",
    ("claude_code", FlowName.PASTE_CODE): "https://platform.claude.com/oauth/code/callback",
    ("codex", FlowName.LOOPBACK): "http://127.0.0.1:1455/auth/callback",
    ("gemini_cli", FlowName.PASTE_CODE): "https://codeassist.google.com/authcode",
    ("gemini_cli", FlowName.LOOPBACK): "http://127.0.0.1:",
}


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if INSTALLED is None:
        pytest.fail("the pinned CLIs are not installed: run `bash scripts/setup.sh`")


@pytest.mark.parametrize(("name", "flow"), REAL, ids=[f"{n}-{f.value}" for n, f in REAL])
def test_real_cli_shows_the_sign_in_url_offline(name: str, flow: FlowName) -> None:
    if (name, flow) in NEEDS_NETWORK_FIRST:
        pytest.xfail(NEEDS_NETWORK_FIRST[(name, flow)])
    provider = PROVIDERS[name]
    res = conformance.run_flow(provider, flow, INSTALLED, url_timeout=90)
    assert res.ok, f"{res.failed_step}\nscreen:\n{res.screen_tail}"
    assert res.cli_version and "unknown" not in res.cli_version
    url = str(res.extra["url"])
    redirect = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["redirect_uri"][0]
    assert redirect.startswith(REDIRECTS[(name, flow)]), redirect
    if flow is FlowName.PASTE_CODE:
        assert res.prompt is not None and res.prompt["awaiting_code"] is True  # the code prompt was read on screen


@pytest.mark.parametrize(("name", "flow"), REAL, ids=[f"{n}-{f.value}" for n, f in REAL])
def test_real_cli_writes_credentials_through_stand_ins(name: str, flow: FlowName) -> None:
    pytest.xfail(
        "not built in time: HTTPS stand-ins for the token endpoints (platform.claude.com, auth.openai.com, "
        "oauth2.googleapis.com) with a test CA trusted via NODE_EXTRA_CA_CERTS/SSL_CERT_FILE and a hosts mapping"
    )


def test_a_missing_cli_fails_at_install_naming_the_fix() -> None:
    res = conformance.run_flow(PROVIDERS["codex"], FlowName.LOOPBACK, None)
    assert res.failed_step == "install: codex is not installed; run `bash scripts/setup.sh`"
