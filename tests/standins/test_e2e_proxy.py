"""One address per person, proven on the main path: the sign-ins of tests/standins/test_e2e.py with
HEARTH_EGRESS_PROXY pointing at the upstream proxy inside the internet stand-in. Everything of a user's sign-in — the
sandbox's Chromium loading the provider's page and the CLI exchanging its code — reaches the provider through that
user's own port on the proxy (GET /api/users/{id}/egress), with the proxy's credentials, and nothing goes around it.
One stand-in and one controller for the module; the example provider in both modes and a real CLI per kind of
client (Node: claude_code; Rust: codex; Node + Google's libraries: gemini_cli) in remote_browser mode."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hearth.guest import clis
from hearth.providers.model import SigninMode
from hearth.standins.e2e import CHROMIUM, STATES, TOKEN_ENDPOINTS, Run, e2e_run, sign_in
from hearth.standins.internet import HOST_IP, PROXY_IP, PROXY_USER, zone

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.sqlite_pass,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh"),
]
RB, DIRECT = SigninMode.REMOTE_BROWSER, SigninMode.DIRECT
CASES = [("example", RB), ("example", DIRECT), ("claude_code", RB), ("codex", RB), ("gemini_cli", RB)]
T0 = time.monotonic()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run() -> AsyncIterator[Run]:
    async with e2e_run(prefix="h3p", proxy=True) as r:
        yield r
    print(f"\ntests/standins/test_e2e_proxy.py: {time.monotonic() - T0:.1f} s for the module")


@pytest.mark.parametrize(("provider", "mode"), CASES, ids=[f"{p}-{m.value}" for p, m in CASES])
async def test_sign_in_through_the_users_proxy_port(run: Run, provider: str, mode: SigninMode) -> None:
    if provider != "example" and clis.installed() is None:
        pytest.skip("the pinned CLIs are not installed (bash scripts/setup.sh)")
    user = f"p-{provider}-{mode.value}".replace("_", "-")
    r = await run.http.get(f"/api/users/{user}/egress")
    assert r.status_code == 200, r.text
    assert r.json()["proxy"]["host"] == PROXY_IP and run.inet.proxy_password not in r.text
    port = int(r.json()["proxy"]["port"])

    out = await sign_in(run, provider, mode, user)
    print(f"{provider} {mode.value} via port {port}: {out.seconds}")
    assert out.ok, (out.failed, out.states, out.requests)
    assert out.states == STATES
    # The sandbox's traffic went through this user's port, authenticated, and only there.
    assert out.proxied, "nothing went through the proxy"
    assert {(s.port, s.user) for s in out.proxied} == {(port, PROXY_USER)}, out.proxied
    # (Chromium's own background names the stand-in does not have get 502 from the proxy; the rest went through.)
    known = zone()
    assert all(s.status == 200 for s in out.proxied if s.target.rsplit(":", 1)[0] in known), out.proxied
    token_host = TOKEN_ENDPOINTS[provider].split()[1].split("/")[0]
    assert f"{token_host}:443" in {s.target for s in out.proxied}  # the CLI's code exchange
    # Nothing of the sandbox reached the provider around the proxy (straight over the host's masquerade).
    assert HOST_IP not in {x.peer for x in out.seen}, out.seen
    assert TOKEN_ENDPOINTS[provider] in out.requests
    if mode is RB:
        page = [x for x in out.seen if "response_type=code" in x.path and "Chrome" in x.user_agent]
        assert page, out.requests  # the sandbox's Chromium loaded the provider's page, through the proxy
    # The proxy's credentials appear nowhere in the controller's own view of the session.
    events = (await run.http.get("/api/auth/credentials/" + user)).text
    assert run.inet.proxy_password not in events
