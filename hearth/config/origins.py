"""HEARTH_EMBED_ORIGINS: the web application's origins (scheme://host[:port]), normalised. Stdlib only; the gateway's
embedding rules (hearth/gateway/embed.py) use the same `origin_of`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

_HOST = re.compile(
    r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*)$"
)


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
