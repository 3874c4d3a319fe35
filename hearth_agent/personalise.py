"""`POST /v1/personalise`: a warm-pool sandbox becomes one person's (hearth/session/pool.py).

Body: `{"secret": "<new agent secret>", "session_id": "...", "providers": ["<definition digest>", ...]}`. The request
is authorised by the current (pool) secret; on success the agent answers only the new secret from then on, knows
its session id (agent → controller calls) and allows only the given provider definitions. Never logs the secret.
"""

from __future__ import annotations

import logging
from typing import Any

from hearth_agent.config import MIN_SECRET, AgentConfig
from hearth_agent.server import AgentServer

log = logging.getLogger("hearth_agent.personalise")


def personalise_route(server: AgentServer, cfg: AgentConfig) -> Any:
    def personalise(body: dict[str, Any]) -> tuple[int, Any]:
        secret, sid, providers = body.get("secret"), body.get("session_id"), body.get("providers")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET:
            return 400, {"error": f"secret must be a string of at least {MIN_SECRET} characters"}
        if not isinstance(sid, str) or not sid:
            return 400, {"error": "session_id must be a non-empty string"}
        if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
            return 400, {"error": "providers must be a list of provider definition digests"}
        raw = cfg.raw
        assert isinstance(raw, dict)  # parse_config builds it as a dict: the extensions read it live
        raw.update(secret=secret, session_id=sid, providers=list(providers))
        server.rekey(secret)
        log.info("personalised", extra={"session_id": sid, "providers": len(providers)})
        return 200, {"personalised": True}

    return personalise
