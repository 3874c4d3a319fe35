"""The web application around the sign-in page, named by HEARTH_EMBED_ORIGINS: the origins that may frame the viewer
page (its CSP `frame-ancestors`), that receive its `postMessage` status events, and that a finished sign-in may send
the person back to (`return_url` on POST /api/auth/start). The setting's parser is hearth/config/origins.py."""

from __future__ import annotations

from collections.abc import Iterable

from hearth.config.origins import origin_of
from hearth.config.origins import parse_origins as parse_origins

MAX_RETURN_URL = 2048


class ReturnUrlError(ValueError):
    """A return_url that is malformed or not on an allowed origin; the message names the fix."""


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
