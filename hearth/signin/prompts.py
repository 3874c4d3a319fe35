"""What the person must see to sign in on their own (direct mode): the agent's `signin_prompt` push, kept per
session in memory only — it holds the full sign-in URL, so it never reaches logs, events or the database — and the
check of a code the person pastes back before anything is sent to the agent (hearth_agent/contract/signin.py:
check_code, the one both sides apply)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hearth_agent.contract.signin import FLOWS


class PromptError(ValueError):
    """A malformed push or code; the message names the fix."""


@dataclass(frozen=True)
class SigninPrompt:
    flow: str
    url: str
    user_code: str | None
    awaiting_code: bool
    message: str | None  # from the agent: the CLI's refusal of a code; in the API: the person's words for it
    detail: str | None = None  # the CLI's own words (the page's Details and the events)
    renewed: bool = False  # the link changed since the person's code was sent: open the new one

    def public(self) -> dict[str, Any]:
        """For the API and the viewer page (both authorised for this session)."""
        return asdict(self)


def _opt_text(data: dict[str, Any], key: str, limit: int) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PromptError(f"{key} must be a string or null")
    return value[:limit]


def parse_prompt(data: dict[str, Any]) -> SigninPrompt:
    """The agent's push body: {flow, url, user_code, awaiting_code, message}."""
    flow, url, awaiting = data.get("flow"), data.get("url"), data.get("awaiting_code", False)
    if flow not in FLOWS:
        raise PromptError(f"flow must be one of {', '.join(FLOWS)}")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 8192:
        raise PromptError("url must be an http(s) URL of at most 8192 characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise PromptError("url must not contain spaces or control characters")
    if not isinstance(awaiting, bool):
        raise PromptError("awaiting_code must be true or false")
    return SigninPrompt(flow, url, _opt_text(data, "user_code", 64), awaiting, _opt_text(data, "message", 500))
