"""Standard Webhooks signatures (https://www.standardwebhooks.com, symmetric scheme `v1`).

The secret is given as `whsec_<base64>` (24-64 random bytes). A message is signed as
`v1,<base64 HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")>`, sent in `webhook-signature` next to
`webhook-id` and `webhook-timestamp` (integer Unix seconds of the attempt: a retry is signed again, with its own
timestamp). `verify` is the receiver's side (used by the tests; a web application may copy it).

The secret never appears in a message, a repr or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from hearth.config.webhooks import SecretFormatError as SecretFormatError
from hearth.config.webhooks import parse_secret as parse_secret

TOLERANCE = 300  # seconds a receiver accepts between webhook-timestamp and its own clock (either way)


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
