"""The webhook settings: the secret's format (`whsec_<base64 of 24-64 bytes>`, Standard Webhooks; the signer in
hearth/webhooks/signer.py uses the same parser) and `hearth config check`'s problems. Each problem names the fix;
the secret is never echoed."""

from __future__ import annotations

import base64
import binascii
import re

PREFIX = "whsec_"
MIN_BYTES, MAX_BYTES = 24, 64
GENERATE_HINT = (
    "generate one: python3 -c \"import base64,secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32))"
    '.decode())"'
)


class SecretFormatError(ValueError):
    """HEARTH_WEBHOOK_SECRET is not `whsec_<base64 of 24-64 bytes>`; the message names the fix, never the value."""


def parse_secret(text: str) -> bytes:
    """`whsec_<base64>` → the key bytes. Raises SecretFormatError naming the fix (the value is never echoed)."""
    if not text.startswith(PREFIX):
        raise SecretFormatError(f"HEARTH_WEBHOOK_SECRET must start with {PREFIX!r} (whsec_<base64>); {GENERATE_HINT}")
    try:
        key = base64.b64decode(text[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SecretFormatError(
            f"HEARTH_WEBHOOK_SECRET: the part after {PREFIX!r} is not valid base64; {GENERATE_HINT}"
        ) from None
    if not MIN_BYTES <= len(key) <= MAX_BYTES:
        raise SecretFormatError(
            f"HEARTH_WEBHOOK_SECRET decodes to {len(key)} bytes; Standard Webhooks needs {MIN_BYTES}-{MAX_BYTES} "
            f"random bytes; {GENERATE_HINT}"
        )
    return key


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
