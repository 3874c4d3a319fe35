"""The QR code of a direct-mode sign-in link, as inline SVG (segno; no image request, no script), so a person can
finish the sign-in on their phone. Made on demand for a control viewer only: the link never leaves memory."""

from __future__ import annotations

from functools import lru_cache

import segno

MAX_LINK = 2048  # longer links make QR codes phones cannot read reliably; the page then shows none


@lru_cache(maxsize=64)
def qr_svg(url: str) -> str | None:
    """An `<svg>` element of the link (dark on white, quiet zone included, scalable), or None for a link too long."""
    if len(url) > MAX_LINK:
        return None
    code = segno.make(url, error="m", micro=False)
    return str(code.svg_inline(scale=4, dark="#000", light="#fff", border=4, omitsize=True, title="QR code"))
