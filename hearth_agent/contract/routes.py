"""The paths of the agent's HTTP API: the agent's server registers them, the controller calls them (hearth/agentlink,
every call site). Every route needs `Authorization: Bearer <agent secret>` except HEALTH."""

from __future__ import annotations

HEALTH = "/health"
OPEN_URL = "/v1/open-url"
BROWSER = "/v1/browser"
PERSONALISE = "/v1/personalise"
EGRESS = "/v1/egress"
LOGIN = "/v1/login"  # POST: start a sign-in (hearth_agent.contract.signin.login_body); GET: its state
LOGIN_CODE = "/v1/login/code"
LOGIN_REPLAY = "/v1/login/replay"
CANCEL_LOGIN = "/v1/cancel-login"
FILES = "/v1/files"
FILES_REMOVE = "/v1/files/remove"
FILES_DIGEST = "/v1/files/digest"
PROMPTS = "/v1/prompts"
PROMPTS_CANCEL = "/v1/prompts/cancel"
PROMPTS_STATUS = "/v1/prompts/status"

# agent → controller pushes: POST {callback}{PUSH_PREFIX}/{session id}/{kind} (the controller's callback listener)
PUSH_PREFIX = "/agent/v1/sessions"
PUSH_KINDS = ("events", "credentials", "signin", "prompt")
