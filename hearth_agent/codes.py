"""Sign-in codes are the person's: a device/user code shown to them, a code they paste. They go to the person (the
`signin` prompt) and to the CLI, never into a reason, an event, a log line or the store.

`scrub_codes` is the one function every text that may carry a CLI's words passes through before it becomes a reason,
an event detail or a log line: in the agent (hearth_agent/loginrun.py, before a failure is reported) and again in the
controller (hearth/signin/codes.py, at `SessionService`'s write of every reason and event detail), so an agent that
forgot — or an older image — still cannot put a code in the store. Stdlib only (it runs inside the sandbox).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[code]"
MIN_KNOWN = 6  # a known code shorter than this is not searched for (it would mangle ordinary words)
# What a device code looks like across providers (RFC 8628 user codes: "DXJF-FLSV", codex's "ABCD-12345"): two
# groups of 4-5 capitals/digits joined by a hyphen, standing alone, with at least one letter (so "2026-1206" is kept).
_SHAPE = re.compile(r"(?<![A-Za-z0-9-])[A-Z0-9]{4,5}-[A-Z0-9]{4,5}(?![A-Za-z0-9-])")


def scrub_codes(text: str, known: Iterable[str] = (), patterns: Iterable[re.Pattern[str]] = ()) -> str:
    """`text` with every sign-in code replaced by "[code]": each code in `known` (shown to or pasted by the person),
    the `code` group of each provider `code_pattern` match, and anything shaped like a device code."""
    for code in sorted({c.strip() for c in known if c and len(c.strip()) >= MIN_KNOWN}, key=len, reverse=True):
        text = re.sub(re.escape(code), MASK, text, flags=re.IGNORECASE)  # "dxjf-flsv" is the same code to an IdP
    for pattern in patterns:
        if "code" in pattern.groupindex:
            text = pattern.sub(_mask_group, text)
    return _SHAPE.sub(lambda m: MASK if any(c.isalpha() for c in m.group(0)) else m.group(0), text)


def _mask_group(m: re.Match[str]) -> str:
    whole, start, end = m.group(0), *m.span("code")
    if start < 0:  # the group did not take part in the match
        return whole
    return whole[: start - m.start()] + MASK + whole[end - m.start() :]
