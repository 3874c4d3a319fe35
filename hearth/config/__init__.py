"""Configuration: one frozen object, read from the environment and `.env`, checked as a whole (layer 1: it imports
nothing of hearth but hearth.errors).

- `settings`: the Settings object and what derives from it;
- `env`: reading the environment and `.env`, unknown variables, `load_settings`, each setting's origin;
- `check`: the cross-field checks (`hearth config check`), each naming the fix;
- the parsers of values other folders use too, here so that any folder may import them: `ranges` (where sandboxes
  never go), `proxy` (HEARTH_EGRESS_PROXY and its ports and CAs), `secrets` (token, node-credential and master keys),
  `origins` (HEARTH_EMBED_ORIGINS), `webhooks` (the webhook URL and secret).
"""

from hearth.config.check import consistency_problems, parse_pool_sizes
from hearth.config.env import (
    READ_ELSEWHERE,
    Origin,
    known_variables,
    load_settings,
    origins,
    read_env_file,
    unknown_variable_problems,
)
from hearth.config.settings import (
    LEGACY_NAMES,
    PLAIN_NAMES,
    BrowserStartName,
    DriverName,
    EgressName,
    EgressPolicyName,
    Settings,
    SigninModeName,
    VncServerName,
    parse_bytes,
)

__all__ = [
    "LEGACY_NAMES",
    "PLAIN_NAMES",
    "READ_ELSEWHERE",
    "BrowserStartName",
    "DriverName",
    "EgressName",
    "EgressPolicyName",
    "Origin",
    "Settings",
    "SigninModeName",
    "VncServerName",
    "consistency_problems",
    "known_variables",
    "load_settings",
    "origins",
    "parse_bytes",
    "parse_pool_sizes",
    "read_env_file",
    "unknown_variable_problems",
]
