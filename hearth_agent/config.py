"""The agent's configuration: one JSON document written by the driver (`/run/hearth/agent.json`, or a pipe), checked
as a whole by the contract (hearth_agent/contract/document.py). It holds the per-sandbox secret; nothing here ever
puts the secret into a message or a repr.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from hearth_agent.contract.document import MIN_SECRET, AgentConfig, ConfigError, Identity
from hearth_agent.contract.document import parse as parse_config

__all__ = ["MIN_SECRET", "AgentConfig", "ConfigError", "Identity", "identity_of", "load_config", "parse_config"]


def identity_of(cfg: AgentConfig | Mapping[str, Any]) -> Identity:
    """The identity a config starts with; a plain mapping (an agent's parts a test or a tool runs on their own) may
    name any of secret, session_id, providers."""
    if isinstance(cfg, AgentConfig):
        return cfg.identity
    secret, sid, providers = cfg.get("secret"), cfg.get("session_id"), cfg.get("providers")
    return Identity(
        secret if isinstance(secret, str) else "",
        sid if isinstance(sid, str) else "",
        None if providers is None else tuple(providers) if isinstance(providers, list) else (),
    )


def load_config(path: str) -> AgentConfig:
    """From a file, or from an inherited descriptor named `/dev/fd/N` (a pipe: read from the descriptor itself, never
    reopened through /proc — the pipe belongs to the launcher — and closed after)."""
    fd = path[len("/dev/fd/") :] if path.startswith("/dev/fd/") else ""
    try:
        with os.fdopen(int(fd), encoding="utf-8") if fd.isdigit() else open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSONDecodeError: its message names a position, not the content
        raise ConfigError(f"agent config {path} is not valid JSON: {exc}") from None
    return parse_config(data)
