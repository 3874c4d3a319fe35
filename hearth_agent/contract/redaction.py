"""Redaction of free text that leaves the agent (a CLI's words in reasons, events and logs) and that the controller
shows: URLs cut to scheme://host/path, tokens and secrets replaced by "[redacted]"."""

from __future__ import annotations

import re
import urllib.parse

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")
_KEYVAL = re.compile(
    r"(?<![A-Za-z])((?:access|refresh|id)?_?(?:token|secret|password|passwd|code|key|verifier|state)[\"']?\s*[=:]\s*"
    r"[\"']?|bearer\s+)[^\s\"'&,;}]+",
    re.IGNORECASE,
)
_RUN = re.compile(r"[A-Za-z0-9_\-+=~%]+")


def _token_like(run: str) -> bool:
    if len(run) >= 24:
        return True
    return len(run) >= 16 and any(c.isdigit() for c in run) and any(c.isalpha() for c in run)


def redact_tokens(text: str) -> str:
    text = _KEYVAL.sub(r"\1[redacted]", text)
    return _RUN.sub(lambda m: "[redacted]" if _token_like(m.group(0)) else m.group(0), text)


def url_summary(url: str) -> str:
    """scheme://host[:port]/path — no user info, query or fragment; token-like path segments redacted."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "[unparseable URL]"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{redact_tokens(parts.path)}"


def url_host(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    except ValueError:
        return ""


def redact(text: str, limit: int = 300) -> str:
    """Free text from a CLI made safe to report: URLs shortened to scheme://host/path, tokens removed."""
    text = _URL.sub(lambda m: url_summary(m.group(0)), text)
    text = redact_tokens(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
