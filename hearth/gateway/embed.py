"""The web application around the sign-in page, named by HEARTH_EMBED_ORIGINS: the origins that may frame the viewer
page (its CSP `frame-ancestors`), that receive its `postMessage` status events, and that a finished sign-in may send
the person back to (`return_url` on POST /api/auth/start). Stdlib only: config.py uses it to check the setting."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

_HOST = re.compile(
    r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*)$"
)
MAX_RETURN_URL = 2048


class ReturnUrlError(ValueError):
    """A return_url that is malformed or not on an allowed origin; the message names the fix."""


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URL (lower-cased, default ports dropped), or None when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host or parts.username is not None or parts.password is not None:
        return None
    shown = f"[{host}]" if ":" in host else host.lower()
    if not _HOST.match(shown):
        return None
    if port is not None and port != (443 if scheme == "https" else 80):
        return f"{scheme}://{shown}:{port}"
    return f"{scheme}://{shown}"


def parse_origins(value: str | Iterable[str]) -> tuple[str, ...]:
    """HEARTH_EMBED_ORIGINS (comma-separated) → normalised origins; ValueError naming the fix for a bad entry (the
    settings loader prefixes the variable's name)."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [v.strip() for v in value]
    out: list[str] = []
    for item in (i for i in items if i):
        origin = origin_of(item)
        parts = urlsplit(item)
        if origin is None or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"{item!r} is not an origin; give scheme://host[:port] without a path, "
                "comma-separated, e.g. https://app.example.com,https://staging.example.com"
            )
        if origin not in out:
            out.append(origin)
    return tuple(out)


def frame_ancestors(origins: Iterable[str]) -> str:
    """The viewer page's Content-Security-Policy: only hearth itself and the allowed origins may frame it."""
    return " ".join(["frame-ancestors", "'self'", *origins])


def check_return_url(url: str, origins: Iterable[str]) -> str:
    """The return_url as given, when it is an http(s) URL on an allowed origin; ReturnUrlError naming the fix."""
    allowed = tuple(origins)
    if len(url) > MAX_RETURN_URL or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ReturnUrlError(
            f"return_url must be an http(s) URL of at most {MAX_RETURN_URL} characters without spaces or control "
            "characters"
        )
    origin = origin_of(url)
    if origin is None:
        raise ReturnUrlError(
            "return_url must be an absolute http(s) URL without user info, e.g. https://app.example.com/done"
        )
    if not allowed:
        raise ReturnUrlError(
            f"return_url {origin} is not allowed: no return origins are configured; set "
            f"HEARTH_EMBED_ORIGINS={origin} (comma-separated origins of your web application)"
        )
    if origin not in allowed:
        raise ReturnUrlError(
            f"return_url {origin} is not an allowed origin ({', '.join(allowed)}); add it to HEARTH_EMBED_ORIGINS "
            "or send a return_url on one of those"
        )
    return url
