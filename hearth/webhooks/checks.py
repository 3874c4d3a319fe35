"""`hearth config check` for the webhook settings: each problem names the fix; the secret is never echoed."""

from __future__ import annotations

import re

from hearth.webhooks.signer import SecretFormatError, parse_secret

_URL = re.compile(r"^https?://[^\s/?#]+(/\S*)?$")


def webhook_problems(url: str, secret: str) -> list[str]:
    problems: list[str] = []
    if url and not _URL.match(url):
        problems.append(f"HEARTH_WEBHOOK_URL={url!r} must be an http(s) URL, e.g. https://app.example.com/hooks/hearth")
    if url and not secret:
        problems.append(
            "HEARTH_WEBHOOK_URL is set without HEARTH_WEBHOOK_SECRET: webhooks are always signed; set "
            "HEARTH_WEBHOOK_SECRET=whsec_<base64 of 24-64 random bytes> (the receiver verifies with the same value)"
        )
    if secret:
        try:
            parse_secret(secret)
        except SecretFormatError as exc:
            problems.append(str(exc))
    return problems
