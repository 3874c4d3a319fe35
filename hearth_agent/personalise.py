"""`POST /v1/personalise`: a warm-pool sandbox becomes one person's (hearth/session/pool.py).

Body: the new identity, `{"secret": "<new agent secret>", "session_id": "...", "providers": ["<definition digest>",
...]}` (hearth_agent/contract/document.py). The request is authorised by the current (pool) secret; on success the
agent's identity is replaced whole: it answers only the new secret from then on, pushes for its session id and allows
only the given provider definitions. Never logs the secret.
"""

from __future__ import annotations

import logging
from typing import Any

from hearth_agent.contract.document import parse_identity
from hearth_agent.server import AgentServer

log = logging.getLogger("hearth_agent.personalise")


def personalise_route(server: AgentServer) -> Any:
    def personalise(body: dict[str, Any]) -> tuple[int, Any]:
        try:
            identity = parse_identity(body)
        except ValueError as exc:
            return 400, {"error": str(exc)}
        server.reidentify(identity)
        providers = len(identity.providers or ())
        log.info("personalised", extra={"session_id": identity.session_id, "providers": providers})
        return 200, {"personalised": True}

    return personalise
