"""Which hop a provider's CLI names when its network fails (its own words, as the pinned CLIs print them), and the
agent's probe event read back: the session fails there with the fix, not as a refused code or an agent failure."""

from __future__ import annotations

import pytest

from hearth.errors import Hop
from hearth.session.reach import cli_unreachable, network_hop, page_unreachable


@pytest.mark.parametrize(
    ("said", "hop"),
    [
        ("Couldn't log in: getaddrinfo EAI_AGAIN platform.claude.com", Hop.DNS),  # Claude Code, issue 21
        ("request to https://oauth2.googleapis.com/token failed, reason: getaddrinfo ENOTFOUND oauth2", Hop.DNS),
        ("error sending request for url (https://auth.openai.com/oauth/token)", Hop.EGRESS),  # Codex (reqwest)
        ("urllib.error.URLError: <urlopen error [Errno 111] Connection refused>", Hop.EGRESS),
        ("connect ETIMEDOUT 104.18.0.1:443", Hop.EGRESS),
        ("Error: self-signed certificate in certificate chain", Hop.TLS),
        ("Failed to authenticate with user code. Retrying...", None),  # Gemini's refusal of a code
        ("Invalid code (invalid_grant). Check the code and try again.", None),
        ("That code wasn't accepted", None),
        ("CLI exited with 1 while waiting for the pasted code: device sign-in failed: expired_token", None),
    ],
)
def test_the_clis_own_words_name_the_hop(said: str, hop: Hop | None) -> None:
    assert network_hop(said) is hop


def test_reasons_name_the_hop_and_the_fix() -> None:
    hop, reason = page_unreachable("[tls] the certificate of claude.ai does not verify: self-signed certificate")
    assert hop is Hop.TLS
    assert reason.startswith("[tls] the sign-in page cannot be reached from the sandbox: the certificate of claude.ai")
    assert "— fix: trust the provider's certificate" in reason
    assert page_unreachable("garbled")[0] is Hop.AGENT  # an unknown tag is the agent's
    said = "Couldn't log in: getaddrinfo EAI_AGAIN platform.claude.com"
    assert cli_unreachable(Hop.DNS, said) == (
        f"[dns] the provider cannot be reached from the sandbox: the CLI said: {said} — fix: give sandboxes a "
        "resolver that answers the provider's name (see `hearth doctor`)"
    )
