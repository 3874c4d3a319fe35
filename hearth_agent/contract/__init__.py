"""The controller↔agent contract, written once and imported by both sides (stdlib only: it runs in the sandbox).

- `document`: the agent-config document (`build`, `locate`, `parse`), the immutable `Identity` the warm pool's
  hand-over replaces whole (`personalise_body`, `parse_identity`);
- `signin`: FLOWS, `check_code` and `CodeRefused`, the one sign-in timeout and the `POST /v1/login` body;
- `redaction`: `redact`, `redact_tokens`, `url_summary`, `url_host`;
- `routes`: the paths of the agent's HTTP API.

The provider-definition validator is hearth_agent/providerdef.py (the controller's pydantic model calls it).
"""

from hearth_agent.contract import document, redaction, routes, signin

__all__ = ["document", "redaction", "routes", "signin"]
