"""The sign-in rules both sides apply: the flows a provider definition may declare, the check of a code the person
pastes (the controller checks it before sending, the agent again before typing it into the CLI), and the one sign-in
timeout — the controller's OAUTH_FLOW_TIMEOUT, sent in every `POST /v1/login` and obeyed by the agent."""

from __future__ import annotations

from typing import Any

FLOWS = ("loopback", "paste_code", "device_code")
MAX_CODE = 512
SIGNIN_TIMEOUT = 600.0  # seconds: a sign-in not completed by then fails (OAUTH_FLOW_TIMEOUT's default)


class CodeRefused(Exception):
    """A pasted code cannot be taken now (HTTP 409) or is malformed (HTTP 400); `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _control(c: str) -> bool:
    """C0 (with DEL) and C1 control characters: none may reach a terminal as part of a code."""
    return ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0


def check_code(code: object) -> str:
    """A code the person pasted, trimmed of spaces: non-empty text of at most MAX_CODE characters without control
    characters; CodeRefused(400, the fix) otherwise."""
    if not isinstance(code, str):
        raise CodeRefused(
            400, 'the code must be a non-empty string: send {"code": "<the code the provider showed you>"}'
        )
    code = code.strip(" ")
    if not code:
        raise CodeRefused(
            400, "the code is empty (it must be a non-empty string); paste the code the provider showed you"
        )
    if len(code) > MAX_CODE:
        raise CodeRefused(
            400, f"the code is longer than {MAX_CODE} characters; paste only the code the provider showed you"
        )
    if any(_control(c) for c in code):
        raise CodeRefused(400, "the code contains control characters; paste only the code the provider showed you")
    return code


def login_body(
    provider: dict[str, Any],
    flow: str | None,
    timeout: float = SIGNIN_TIMEOUT,
    env: dict[str, str] | None = None,
    probe_page: bool = False,
) -> dict[str, Any]:
    """`POST /v1/login`: the provider definition (its agent document), the flow, the sign-in timeout in seconds, extra
    environment (HEARTH_* only) and whether a page opened in the sandbox's browser is probed for reachability."""
    body: dict[str, Any] = {"provider": provider, "flow": flow, "timeout": timeout, "env": dict(env or {})}
    if probe_page:
        body["probe_page"] = True
    return body


def login_timeout(body: dict[str, Any]) -> float:
    """The sign-in timeout a `POST /v1/login` carries (SIGNIN_TIMEOUT when it names none); ValueError if malformed."""
    value = body.get("timeout", SIGNIN_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("timeout must be a positive number of seconds")
    return float(value)
