"""Standard Webhooks signatures (https://www.standardwebhooks.com, symmetric scheme `v1`).

The secret is given as `whsec_<base64>` (24-64 random bytes). A message is signed as
`v1,<base64 HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")>`, sent in `webhook-signature` next to
`webhook-id` and `webhook-timestamp` (integer Unix seconds of the attempt: a retry is signed again, with its own
timestamp). `verify` is the receiver's side (used by the tests; a web application may copy it).

The secret never appears in a message, a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

PREFIX = "whsec_"
MIN_BYTES, MAX_BYTES = 24, 64
TOLERANCE = 300  # seconds a receiver accepts between webhook-timestamp and its own clock (either way)
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


class Signer:
    """Signs outgoing webhooks with one key (parsed once)."""

    def __init__(self, secret: str) -> None:
        self._key = parse_secret(secret)

    def __repr__(self) -> str:
        return "Signer(<secret hidden>)"

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` header value for this id, timestamp and body."""
        return sign(self._key, msg_id, timestamp, body)

    def headers(self, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """The three Standard Webhooks headers of one attempt, timestamped now."""
        ts = int(time.time() if now is None else now)
        return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": self.sign(msg_id, ts, body)}


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    if "." in msg_id:
        raise ValueError("a webhook id must not contain '.' (it delimits the signed content)")
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class VerificationError(Exception):
    """A webhook that does not verify (receiver side)."""


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
    """Check a received webhook: the three headers present, the timestamp within TOLERANCE, and one of the
    space-separated `v1,` signatures matching (constant-time). Raises VerificationError."""
    key = parse_secret(secret)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_text, sigs = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not ts_text or not sigs:
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(ts_text)
    except ValueError:
        raise VerificationError("webhook-timestamp is not an integer") from None
    if abs((time.time() if now is None else now) - ts) > TOLERANCE:
        raise VerificationError("webhook-timestamp is outside the tolerance (replay?)")
    expected = sign(key, msg_id, ts, body)
    for candidate in sigs.split(" "):
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise VerificationError("no matching v1 signature")
