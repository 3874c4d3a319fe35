"""Where the settings come from: the environment and a dotenv file, which variables are read (a variable that looks
like one of ours but is not read — the seed's `VM_IP_POOL_START` — is an error naming the one we do read), loading
with every problem listed, and each effective setting's origin."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, ValidationError

from hearth.config.check import consistency_problems
from hearth.config.settings import LEGACY_NAMES, Settings
from hearth.errors import ConfigError

# Unprefixed variables that look like network settings: anything matching is checked against the known names.
_NETWORKISH = re.compile(r"^(VM_|FC_|FIRECRACKER_)?(IP_POOL|BRIDGE|INTERNAL_NET|TAP_|GUEST_IP)")


@dataclass(frozen=True)
class Origin:
    """Where one effective setting came from."""

    field: str
    variable: str
    value: str
    source: str  # "env", ".env" or "default"


def _variable_for(name: str) -> str:
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        assert isinstance(first, str)
        return first
    return f"HEARTH_{name.upper()}"


def known_variables() -> dict[str, str]:
    """Environment variable name → settings field."""
    return {_variable_for(name): name for name in Settings.model_fields}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments and blanks skipped)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot be read ({exc.strerror})"
        raise ConfigError([f"the dotenv file {path} {why}; fix it or point --env-file elsewhere"]) from None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        out[key.strip()] = value.strip().strip("'\"")
    return out


# Read outside the Settings object, by one module each (not the controller's configuration, but not unread either).
READ_ELSEWHERE: dict[str, str] = {
    "HEARTH_CLIS_CACHE": "hearth/guest/clis.py: where scripts/setup.sh installed the pinned provider CLIs",
    "HEARTH_CLIS_BIN": "hearth_agent/signin.py: the provider CLIs' bin directory inside a sandbox",
    "HEARTH_LAB_PYTHONPATH": "hearth/cluster/lab.py: the multi-node lab's nodes run another checkout",
}


def unknown_variable_problems(variables: Mapping[str, str]) -> list[str]:
    """Problems for variables that look like hearth's or the network's but are not read."""
    known = known_variables()
    problems = []
    for name in sorted(variables):
        if name in known or name in READ_ELSEWHERE:
            continue
        if name in LEGACY_NAMES:
            problems.append(f"{name} is set but not read; did you mean {LEGACY_NAMES[name]}?")
        elif name.startswith("HEARTH_") or _NETWORKISH.match(name):
            guess = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {guess[0]}?" if guess else "; known names: see `hearth config check`"
            problems.append(f"{name} is set but not read{hint}")
    return problems


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env"), **overrides: Any
) -> Settings:
    """Read, validate and check the configuration; raise ConfigError listing every problem and its fix."""
    env = dict(os.environ if environ is None else environ)
    file_vars = read_env_file(env_file) if env_file is not None else {}
    problems = unknown_variable_problems({**file_vars, **env})
    known = known_variables()
    merged = {known[k]: v for k, v in {**file_vars, **env}.items() if k in known}
    try:
        settings = Settings.model_validate({**merged, **overrides})
    except ValidationError as exc:
        for err in exc.errors():
            loc = str(err["loc"][0]) if err["loc"] else "?"
            var = _variable_for(loc) if loc in Settings.model_fields else loc
            problems.append(f"{var}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(problems) from None
    problems += consistency_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def origins(
    settings: Settings, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> list[Origin]:
    """Each setting, its variable, its value and where it came from."""
    env = os.environ if environ is None else environ
    file_vars = read_env_file(env_file) if env_file is not None else {}
    out = []
    for name in Settings.model_fields:
        var = _variable_for(name)
        source = "env" if var in env else ".env" if var in file_vars else "default"
        value: Any = getattr(settings, name)
        hidden = ("api_keys", "token_secret", "master_key", "webhook_secret", "node_credential", "egress_proxy")
        if name in hidden and value:
            shown = "<set, hidden>"
        elif name == "database_url" and value:
            shown = _without_password(value)
        elif isinstance(value, tuple):
            shown = ",".join(str(v) for v in value)
        else:
            shown = str(value)
        out.append(Origin(name, var, shown, source))
    return out


def _without_password(url: str) -> str:
    """A database URL as shown: its password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<set, unparsable>"
