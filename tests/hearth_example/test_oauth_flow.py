"""The example provider over loopback: a real authorization-code + PKCE exchange between the CLI (in a PTY-less
subprocess here; the agent drives it in a PTY) and the IdP, with a scripted "browser" that approves the consent."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth_example.idp import IdpServer, IdpState, s256

BROWSER = """#!{python}
import re, sys, urllib.parse, urllib.request
page = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page))
base = sys.argv[1].split("/authorize")[0]
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None
opener = urllib.request.build_opener(NoRedirect)
try:
    opener.open(base + "/approve", data=urllib.parse.urlencode(fields).encode(), timeout=10)
except urllib.error.HTTPError as e:
    urllib.request.urlopen(e.headers["Location"], timeout=10).read()
"""


@pytest.fixture
def idp() -> Iterator[tuple[str, IdpState]]:
    state = IdpState()
    server = IdpServer(("127.0.0.1", 0), state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_cli_signs_in_and_writes_private_credentials(idp: tuple[str, IdpState], tmp_path: Path) -> None:
    issuer, state = idp
    browser = tmp_path / "browser"
    browser.write_text(BROWSER.format(python=sys.executable))
    browser.chmod(0o755)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "HEARTH_EXAMPLE_ISSUER": issuer,
        "BROWSER": str(browser),
        "HEARTH_EXAMPLE_TIMEOUT": "20",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "hearth_example.cli", "login"],
        input="y\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(re.escape(issuer) + r"/authorize\?\S+code_challenge_method=S256", proc.stdout)
    creds = tmp_path / ".example" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    body = json.loads(creds.read_text())
    assert body["access_token"].startswith("ex-at-") and body["issuer"] == issuer
    assert [e["kind"] for e in state.events] == ["authorize_page", "approved", "token_issued"]


def test_token_endpoint_enforces_pkce(idp: tuple[str, IdpState]) -> None:
    issuer, state = idp
    from hearth_example.idp import Grant

    state.codes["c1"] = Grant("cid", "http://127.0.0.1:1/cb", s256("right-verifier"), 1e12)
    form = {
        "grant_type": "authorization_code",
        "code": "c1",
        "redirect_uri": "http://127.0.0.1:1/cb",
        "client_id": "cid",
        "code_verifier": "wrong-verifier",
    }
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(issuer + "/token", data=urllib.parse.urlencode(form).encode(), timeout=5)
    assert info.value.code == 400
    assert "c1" not in state.codes  # a code is single-use even when the exchange fails


def test_authorize_rejects_plain_pkce(idp: tuple[str, IdpState]) -> None:
    issuer, _ = idp
    q = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": "x",
            "redirect_uri": "http://127.0.0.1/cb",
            "state": "s",
            "code_challenge": "abc",
            "code_challenge_method": "plain",
        }
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{issuer}/authorize?{q}", timeout=5)
    assert info.value.code == 400
