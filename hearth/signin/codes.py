"""The sign-in codes this controller knows, per session, so that none is ever written: every reason and event detail
`SessionService` stores passes through `SessionCodes.scrub` (hearth_agent/codes.py: the codes shown to or pasted by
the person, whatever a provider's `code_pattern` finds, anything shaped like a device code). Memory only: a code is
remembered while its session lives (the prompt the agent pushed, a pasted code) and forgotten when it ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from hearth.providers.model import Provider
from hearth_agent.codes import scrub_codes


class SessionCodes:
    def __init__(self, providers: Callable[[], Mapping[str, Provider]]) -> None:
        self._providers = providers
        self._known: dict[str, set[str]] = {}

    def remember(self, session_id: str, code: str | None) -> None:
        if code:
            self._known.setdefault(session_id, set()).add(code)

    def forget(self, session_id: str) -> None:
        self._known.pop(session_id, None)

    def scrub(self, session_id: str, text: str | None) -> str | None:
        """`text` without any sign-in code (None stays None)."""
        if not text:
            return text
        patterns = [
            re.compile(flow.code_pattern)
            for provider in self._providers().values()
            for flow in provider.flows.values()
            if flow.code_pattern
        ]
        return scrub_codes(text, self._known.get(session_id, ()), patterns)
